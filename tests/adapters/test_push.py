"""The upload client of `loraswap adapters push` / `loraswap train --push`."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from loraswap.adapters.package import TaskKind
from loraswap.adapters.push import PlainPeftHints, PushRefusedError, PushTarget, push_package
from loraswap.core.errors import AdapterValidationError

TARGET = PushTarget(server="http://svc:8000/", admin_token="s3cret", tenant="acme",
                    name="sent")


@pytest.fixture
def package(tmp_path: Path) -> Path:
    folder = tmp_path / "pkg"
    folder.mkdir()
    for name, body in {"adapter_config.json": b"{}", "adapter_model.safetensors": b"W" * 5000,
                       "profile.json": b"{}", "loraswap.json": b'{"task": "seq-cls"}'}.items():
        (folder / name).write_bytes(body)
    return folder


def test_upload_is_one_multipart_part_per_file_with_bearer_token(package: Path) -> None:
    seen: list[tuple[httpx.Request, bytes]] = []
    progress: list[tuple[int, int]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request, request.read()))
        return httpx.Response(201, json={"version": "3", "active": False})

    reply = push_package(package, TARGET, transport=httpx.MockTransport(handler),
                         progress=lambda sent, total: progress.append((sent, total)))
    assert reply["version"] == "3"
    [(request, body)] = seen
    assert str(request.url) == "http://svc:8000/admin/adapters/acme/sent/versions"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert body.count(b'name="files"') == 4
    for name in ("adapter_config.json", "adapter_model.safetensors", "profile.json",
                 "loraswap.json"):
        assert f'filename="{name}"'.encode() in body
    assert progress[-1] == (len(body), len(body))  # the bar reaches the end


def test_refusals_show_the_server_message(package: Path) -> None:
    def json_error(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"error": {"code": "adapter_invalid",
                                                   "message": "rank 64 exceeds 16"}})

    with pytest.raises(PushRefusedError, match=r"\(422\): rank 64 exceeds 16"):
        push_package(package, TARGET, transport=httpx.MockTransport(json_error))

    def plain_text(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="bad gateway upstream")

    with pytest.raises(PushRefusedError, match="bad gateway upstream"):
        push_package(package, TARGET, transport=httpx.MockTransport(plain_text))


def test_unreachable_service_bad_names_and_incomplete_packages(package: Path) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(PushRefusedError, match="cannot reach"):
        push_package(package, TARGET, transport=httpx.MockTransport(refused))
    bad_name = PushTarget(server="http://svc", admin_token=None, tenant="Acme", name="sent")
    with pytest.raises(AdapterValidationError, match="Acme"):
        push_package(package, bad_name)
    (package / "adapter_config.json").unlink()
    with pytest.raises(AdapterValidationError, match=r"has no adapter_config\.json"):
        push_package(package, TARGET)


def test_a_plain_peft_folder_goes_with_its_hints_and_without_other_files(
    package: Path,
) -> None:
    (package / "loraswap.json").unlink()
    (package / "profile.json").unlink()
    (package / "README.md").write_text("# model card PEFT writes")
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.read())
        return httpx.Response(201, json={"version": "1", "active": True})

    hints = PlainPeftHints(task=TaskKind.SEQ_CLS, labels=("neg", "pos"), ignore_base_name=True)
    push_package(package, TARGET, hints=hints, transport=httpx.MockTransport(handler))
    [body] = seen
    assert body.count(b'name="files"') == 2 and b"README.md" not in body
    for field, value in (("task", "seq-cls"), ("labels", "neg"), ("labels", "pos"),
                         ("ignore_base_name", "true")):
        assert f'name="{field}"\r\n\r\n{value}\r\n'.encode() in body
