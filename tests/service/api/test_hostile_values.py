"""Values a hostile or careless client sends (issue 13, item 11): each one is answered with a
4xx whose body names the problem, never a 500 or a 503."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from loraswap.adapters.package import (
    CONFIG_FILE,
    package_file_digests,
    read_manifest,
    write_manifest,
)
from loraswap.adapters.validation import ManifestDefaults, ValidationLimits, validate_package
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import AdapterValidationError
from tests.service.conftest import LiveServer, PackageFactory, ServerFactory, upload_files

LONE_SURROGATE = '"\\ud800 hello"'  # a JSON string that decodes to a lone surrogate


@pytest.fixture
def base_fingerprint_of_tiny(tiny_base_dir: Path) -> BaseModelFingerprint:
    """The tiny base model's fingerprint, as the service computes it."""
    return BaseModelFingerprint.from_folder(tiny_base_dir)


@pytest.fixture
def server(live_server: ServerFactory) -> LiveServer:
    """A dev-mode server: /admin is open, /v1 needs no key."""
    return live_server()


def _post_raw(server: LiveServer, path: str, body: str) -> httpx.Response:
    return server.client.post(path, content=body.encode("ascii"),
                              headers={"Content-Type": "application/json"})


def _problem(response: httpx.Response, *, status: int | tuple[int, ...]) -> str:
    """The whole error body as text, after checking the status and the documented shape."""
    assert response.status_code in (status if isinstance(status, tuple) else (status,)), \
        response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    return json.dumps(body)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/predict", '{"inputs": "hi", "parameters": {"seed": 18446744073709551616}}'),
    ("/v1/completions", '{"model": "base", "prompt": "hi", "seed": 18446744073709551616}'),
    ("/v1/chat/completions", '{"model": "base", "seed": 18446744073709551616, '
                             '"messages": [{"role": "user", "content": "hi"}]}'),
], ids=["predict", "completions", "chat"])
def test_seed_of_2_to_the_64_is_a_4xx_naming_seed(server: LiveServer, path: str,
                                                   body: str) -> None:
    response = _post_raw(server, path, body)
    assert 400 <= response.status_code < 500, response.text
    assert "seed" in response.text


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/predict", '{"inputs": ' + LONE_SURROGATE + '}'),
    ("/v1/predict", '{"inputs": ["ok", ' + LONE_SURROGATE + ']}'),
    ("/v1/predict", '{"inputs": [{"role": "user", "content": ' + LONE_SURROGATE + '}]}'),
    ("/v1/completions", '{"model": "base", "prompt": ' + LONE_SURROGATE + '}'),
    ("/v1/chat/completions", '{"model": "base", "messages": [{"role": "user", '
                             '"content": ' + LONE_SURROGATE + '}]}'),
    ("/v1/chat/completions", '{"model": "base", "messages": [{"role": "user", '
                             '"content": [{"type": "text", "text": ' + LONE_SURROGATE + '}]}]}'),
], ids=["predict-text", "predict-batch", "predict-chat", "completions", "chat", "chat-parts"])
def test_lone_surrogates_are_a_4xx_naming_them(server: LiveServer, path: str,
                                               body: str) -> None:
    response = _post_raw(server, path, body)
    assert 400 <= response.status_code < 500, response.text
    assert "surrogate" in response.text
    assert server.client.get("/metrics").status_code == 200


def test_tiny_request_rate_policy_is_refused(server: LiveServer) -> None:
    response = server.client.post("/admin/tenants", json={
        "name": "acme", "policy": {"requests_per_second": 5e-324}})
    assert "requests_per_second" in _problem(response, status=(400, 422))
    created = server.client.post("/admin/tenants", json={"name": "acme"})
    assert created.status_code == 201, created.text
    response = server.client.put("/admin/tenants/acme/policy",
                                 json={"requests_per_second": 5e-324})
    assert "requests_per_second" in _problem(response, status=(400, 422))


@pytest.mark.parametrize("version", ["-1", "0", "1" + "0" * 300])
def test_impossible_version_numbers_are_a_4xx(server: LiveServer, make_package: PackageFactory,
                                              version: str) -> None:
    assert server.client.post("/admin/tenants", json={"name": "acme"}).status_code == 201
    registered = server.client.post("/admin/adapters/acme/chat/versions",
                                    files=upload_files(make_package("chat")))
    assert registered.status_code == 201, registered.text
    for method, path in [("DELETE", f"/admin/adapters/acme/chat/versions/{version}"),
                         ("POST", "/admin/adapters/acme/chat/promote")]:
        response = server.client.request(
            method, path, json={"version": int(version)} if method == "POST" else None)
        assert 400 <= response.status_code < 500, response.text
        assert "version" in response.text


@pytest.mark.parametrize(("field", "value"), [
    ("lora_dropout", "a lot"), ("lora_dropout", [0.1]),
    ("target_modules", 5), ("target_modules", {"q_proj": 1}), ("target_modules", [1, 2]),
])
def test_wrongly_typed_peft_config_fields_are_a_422_naming_them(
        server: LiveServer, make_package: PackageFactory, field: str, value: Any) -> None:
    folder = make_package("typed")
    config_path = folder / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config[field] = value
    config_path.write_text(json.dumps(config))
    assert server.client.post("/admin/tenants", json={"name": "acme"}).status_code == 201
    manifest = read_manifest(folder)  # the file digests must still agree
    write_manifest(folder, manifest.model_copy(update={"files": package_file_digests(folder)}))
    response = server.client.post("/admin/adapters/acme/typed/versions",
                                  files=upload_files(folder))
    assert field in _problem(response, status=422)


def test_wrongly_typed_peft_fields_in_a_plain_folder_are_named(
        make_package: PackageFactory, base_fingerprint_of_tiny: BaseModelFingerprint) -> None:
    """A plain PEFT folder gets a synthesized manifest; bad types are named there too."""
    folder = make_package("plain")
    (folder / "loraswap.json").unlink()
    config_path = folder / CONFIG_FILE
    for field, value in [("lora_dropout", "a lot"), ("target_modules", 5)]:
        config = json.loads(config_path.read_text())
        config[field] = value
        config_path.write_text(json.dumps(config))
        with pytest.raises(AdapterValidationError, match=field):
            validate_package(folder, base_fingerprint_of_tiny, ValidationLimits(),
                             manifest_defaults=ManifestDefaults(task=None, labels=None))
