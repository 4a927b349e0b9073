"""Client side of adapter registration: upload a package to a running service.

Used by ``loraswap adapters push`` and ``loraswap train --push``. The body is streamed from
the files (multipart, field ``files``), so large adapters are never held in memory, and a
callback reports the bytes sent for a progress bar. A plain PEFT folder (no
``loraswap.json``) is sent as it is, with the task and labels the caller gives as form
fields; the service builds its manifest and answers with what it inferred.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loraswap.adapters.lora_format import CONFIG_FILE, WEIGHTS_FILE
from loraswap.adapters.package import MANIFEST_FILE, PACKAGE_FILES, TaskKind, check_safe_name
from loraswap.core.errors import AdapterValidationError, LoraswapError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


class PushRefusedError(LoraswapError):
    """The service refused the upload; ``status`` and the server's message are kept."""

    code = "push_refused"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the server refused the upload ({status}): {message}")
        self.status = status


@dataclass(frozen=True)
class PushTarget:
    """Where to register: service URL, admin token, tenant and adapter name."""

    server: str
    admin_token: str | None
    tenant: str
    name: str
    activate: bool | None = None


@dataclass(frozen=True)
class PlainPeftHints:
    """For a plain PEFT folder: the task (default: its ``task_type``), the class names in
    head order, and whether to accept a ``base_model_name_or_path`` naming another model."""

    task: TaskKind | None = None
    labels: tuple[str, ...] = ()
    ignore_base_name: bool = False

    def form_fields(self) -> dict[str, str | list[str]]:
        """The upload's form fields (``labels`` repeated, one per class)."""
        fields: dict[str, str | list[str]] = {}
        if self.task is not None:
            fields["task"] = self.task.value
        if self.labels:
            fields["labels"] = list(self.labels)
        if self.ignore_base_name:
            fields["ignore_base_name"] = "true"
        return fields


def package_upload_files(path: Path) -> list[Path]:
    """The files to upload for a package folder (or the archive itself)."""
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise AdapterValidationError(
                f"{path} is neither a package folder nor a .tar/.tar.gz/.zip archive")
        return [path]
    if not path.is_dir():
        raise AdapterValidationError(f"{path} does not exist")
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / required).is_file():
            raise AdapterValidationError(
                f"{path} has no {required}: a package (or plain PEFT folder) holds "
                f"{CONFIG_FILE} and {WEIGHTS_FILE}, saved with safetensors")
    # Other files (README.md, tokenizer files a trainer saved beside the adapter) are
    # not part of the package and are not sent.
    return [path / n for n in (*PACKAGE_FILES, MANIFEST_FILE) if (path / n).is_file()]


def _error_message(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or response.reason_phrase


def push_package(path: Path, target: PushTarget, *,
                 hints: PlainPeftHints | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 transport: httpx.BaseTransport | None = None,
                 timeout: float = 600.0) -> dict[str, Any]:
    """Upload the package at ``path``; the server's description of the new version.

    ``hints`` complete a plain PEFT folder's manifest (the server refuses them for a
    package whose own manifest disagrees). ``progress(sent, total)`` is called as the body
    goes out. Raises
    :class:`PushRefusedError` with the server's message on any non-2xx answer.
    """
    check_safe_name("tenant", target.tenant)
    check_safe_name("adapter", target.name)
    paths = package_upload_files(path)
    url = f"{target.server.rstrip('/')}/admin/adapters/{target.tenant}/{target.name}/versions"
    headers = {"Authorization": f"Bearer {target.admin_token}"} if target.admin_token else {}
    data = (hints or PlainPeftHints()).form_fields()
    if target.activate is not None:
        data["activate"] = str(target.activate).lower()
    with contextlib.ExitStack() as stack, httpx.Client(transport=transport,
                                                        timeout=timeout) as client:
        files = [("files", (p.name, stack.enter_context(p.open("rb")))) for p in paths]
        request = client.build_request("POST", url, headers=headers, files=files, data=data)
        total = int(request.headers.get("content-length", 0))

        def body() -> Iterator[bytes]:
            sent = 0
            for chunk in request.stream:  # type: ignore[union-attr]
                sent += len(chunk)
                if progress is not None:
                    progress(sent, total)
                yield chunk

        try:
            response = client.post(url, headers=dict(request.headers), content=body())
        except httpx.HTTPError as exc:
            raise PushRefusedError(0, f"cannot reach {target.server}: {exc}") from exc
    if response.status_code >= 300:
        raise PushRefusedError(response.status_code, _error_message(response))
    result: dict[str, Any] = response.json()
    return result
