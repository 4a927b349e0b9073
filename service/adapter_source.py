"""Where servable adapters come from. In this slice: a local folder of PEFT adapters."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from adapters.errors import AdapterNotFoundError, InvalidRequestError
from adapters.lora_format import CONFIG_FILE, WEIGHTS_FILE, LoraAdapterWeights, read_lora_adapter
from adapters.package import MANIFEST_FILE, TaskKind, read_manifest
from service.engine.residency import AdapterKey

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ResolvedAdapter:
    """A servable adapter version and how to read its weights."""

    key: AdapterKey
    read: Callable[[], LoraAdapterWeights]
    task: TaskKind = TaskKind.CAUSAL_LM
    # Class names in head order (seq-cls / token-cls); None: "LABEL_<i>".
    labels: tuple[str, ...] | None = None


class AdapterResolver(Protocol):
    """Looks adapters up by the name a request uses."""

    def resolve(self, name: str) -> ResolvedAdapter:
        """The adapter called ``name``; :class:`AdapterNotFoundError` if there is none."""
        ...

    def names(self) -> list[str]:
        """Every servable adapter name."""
        ...


def check_adapter_name(name: str) -> None:
    """Refuse names that could escape a folder or break labels (400 naming the rule)."""
    if not ADAPTER_NAME.fullmatch(name):
        raise InvalidRequestError(
            f"adapter name {name!r} is invalid: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 128 characters"
        )


_TASK_BY_PEFT_TYPE = {kind.peft_task_type: kind for kind in TaskKind}


def _task_of(folder: Path) -> tuple[TaskKind, tuple[str, ...] | None]:
    """Task and labels: from ``loraswap.json`` when present, else PEFT's ``task_type``."""
    if (folder / MANIFEST_FILE).is_file():
        manifest = read_manifest(folder)
        return manifest.task, tuple(manifest.labels) if manifest.labels else None
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return TaskKind.CAUSAL_LM, None  # read() reports the broken config
    task_type = raw.get("task_type") if isinstance(raw, dict) else None
    return _TASK_BY_PEFT_TYPE.get(str(task_type), TaskKind.CAUSAL_LM), None


class LocalAdapterDirectory:
    """``LORASWAP_ADAPTER_DIR``: one PEFT adapter per sub-folder, read-only.

    The version of an adapter is derived from its weights file's size and modification
    time, so replacing the files on disk serves the new weights to new requests.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def resolve(self, name: str) -> ResolvedAdapter:
        """The adapter in sub-folder ``name``."""
        check_adapter_name(name)
        if self.root is None:
            raise AdapterNotFoundError(name)
        folder = self.root / name
        weights = folder / WEIGHTS_FILE
        if not (folder / CONFIG_FILE).is_file():
            raise AdapterNotFoundError(name)
        try:
            stat = weights.stat()
        except FileNotFoundError:
            stat = (folder / CONFIG_FILE).stat()  # read() will name the missing file
        version = f"{stat.st_size:x}-{stat.st_mtime_ns:x}"
        task, labels = _task_of(folder)
        return ResolvedAdapter(AdapterKey(name, version), lambda: read_lora_adapter(folder, name),
                               task=task, labels=labels)

    def names(self) -> list[str]:
        """Sub-folders that hold an adapter config."""
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if (p / CONFIG_FILE).is_file() and ADAPTER_NAME.fullmatch(p.name)
        )
