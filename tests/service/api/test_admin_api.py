"""The admin API against a real server: tenants, keys, uploads, promote/rollback, pins."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from loraswap.core.errors import ConfigurationError
from loraswap.service.app import create_app
from loraswap.service.settings import Settings
from tests.service.conftest import LiveServer, PackageFactory, ServerFactory, upload_files
from tests.utils.clock import FakeClock

ADMIN = "adm-" + "7" * 40
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create_tenant(server: LiveServer, name: str, **policy: Any) -> str:
    """Create a tenant through the API; its API key."""
    response = server.client.post("/admin/tenants", headers=ADMIN_HEADERS,
                                  json={"name": name, "policy": policy})
    assert response.status_code == 201, response.text
    key: str = response.json()["api_key"]
    return key


def upload(server: LiveServer, tenant: str, name: str, folder: Path,
           **form: str) -> httpx.Response:
    """POST a package's files as a new version."""
    return server.client.post(f"/admin/adapters/{tenant}/{name}/versions",
                              headers=ADMIN_HEADERS, files=upload_files(folder), data=form)


def predict(server: LiveServer, key: str, adapter: str | None) -> dict[str, Any]:
    """A greedy 8-token answer; the whole body."""
    response = server.client.post("/v1/predict", headers=_bearer(key), json={
        "adapter": adapter, "inputs": "the quick brown fox",
        "parameters": {"max_new_tokens": 8, "ignore_eos": True}})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def server(live_server: ServerFactory) -> LiveServer:
    """A server in production mode (admin token set, keys required)."""
    return live_server(admin_token=ADMIN, dev_mode=False)


def test_admin_api_needs_the_admin_token(server: LiveServer) -> None:
    key = create_tenant(server, "acme")
    assert server.client.get("/admin/tenants").status_code == 401
    assert server.client.get("/admin/tenants", headers=_bearer("x" * 40)).status_code == 401
    # A valid tenant key is not an admin token.
    response = server.client.get("/admin/tenants", headers=_bearer(key))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid admin token"
    listed = server.client.get("/admin/tenants", headers=ADMIN_HEADERS).json()
    assert [t["name"] for t in listed] == ["acme"]
    assert "api_key" not in listed[0] and "key_digests" not in listed[0]


def test_keys_work_rotate_and_die_with_the_tenant(server: LiveServer) -> None:
    first = create_tenant(server, "acme")
    assert server.client.post("/v1/predict", json={"inputs": "hi"}).status_code == 401
    assert predict(server, first, None)["outputs"][0]["tokens"] == 8
    rotated = server.client.post("/admin/tenants/acme/keys/rotate", headers=ADMIN_HEADERS)
    second = rotated.json()["api_key"]
    assert second != first and rotated.json()["tenant"]["keys"] == 1
    refused = server.client.post("/v1/predict", headers=_bearer(first), json={"inputs": "hi"})
    assert refused.status_code == 401
    assert predict(server, second, None)["outputs"][0]["tokens"] == 8
    assert server.client.delete("/admin/tenants/acme", headers=ADMIN_HEADERS).status_code == 204
    gone = server.client.post("/v1/predict", headers=_bearer(second), json={"inputs": "hi"})
    assert gone.status_code == 401


def test_versions_promote_and_rollback_without_restart(
    server: LiveServer, make_package: PackageFactory,
) -> None:
    key = create_tenant(server, "acme")
    first = upload(server, "acme", "helper", make_package("v1", seed=1))
    assert first.status_code == 201, first.text
    assert first.json()["version"] == "1" and first.json()["active"] is True
    answer_v1 = predict(server, key, "acme/helper")
    assert answer_v1["adapter_version"] == "1"

    second = upload(server, "acme", "helper", make_package("v2", seed=2))
    assert second.json()["version"] == "2" and second.json()["active"] is False
    assert predict(server, key, "acme/helper")["adapter_version"] == "1"

    promoted = server.client.post("/admin/adapters/acme/helper/promote",
                                  headers=ADMIN_HEADERS, json={"version": 2})
    assert promoted.status_code == 200 and promoted.json()["active_version"] == "2"
    answer_v2 = predict(server, key, "acme/helper")
    assert answer_v2["adapter_version"] == "2"
    assert answer_v2["outputs"][0]["text"] != answer_v1["outputs"][0]["text"]

    rolled = server.client.post("/admin/adapters/acme/helper/rollback", headers=ADMIN_HEADERS)
    assert rolled.json()["active_version"] == "1"
    again = predict(server, key, "acme/helper")
    assert again["adapter_version"] == "1"
    assert again["outputs"][0]["text"] == answer_v1["outputs"][0]["text"]


def test_a_version_can_be_imported_from_a_store_uri(
    live_server: ServerFactory, make_package: PackageFactory, tmp_path: Path,
) -> None:
    server = live_server(admin_token=ADMIN, dev_mode=False, import_roots=[tmp_path])
    key = create_tenant(server, "acme")
    folder = make_package("v1", seed=3)
    imported = server.client.post("/admin/adapters/acme/helper/versions/import",
                                  headers=ADMIN_HEADERS, json={"source_uri": folder.as_uri()})
    assert imported.status_code == 201, imported.text
    assert imported.json()["version"] == "1" and imported.json()["active"] is True
    assert predict(server, key, "acme/helper")["adapter_version"] == "1"
    missing = server.client.post("/admin/adapters/acme/helper/versions/import",
                                 headers=ADMIN_HEADERS,
                                 json={"source_uri": (folder.parent / "nope").as_uri()})
    assert missing.status_code in (404, 422) and "nope" in missing.json()["error"]["message"]


def test_listing_shows_metadata_and_residency(
    server: LiveServer, make_package: PackageFactory,
) -> None:
    key = create_tenant(server, "acme")
    upload(server, "acme", "helper", make_package("v1", rank=8))
    predict(server, key, "acme/helper")
    info = server.client.get("/admin/adapters/acme/helper", headers=ADMIN_HEADERS).json()
    assert info["active_version"] == "1" and info["pinned"] is False
    version = info["versions"][0]
    assert version["task"] == "causal-lm" and version["lora"]["r"] == 8
    assert (version["attention"], version["text_split"]) == ("causal", "none")
    assert set(version["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert info["residency"] == {"in_slot": ["1"], "in_host_memory": ["1"]}
    listed = server.client.get("/admin/adapters?tenant=acme", headers=ADMIN_HEADERS).json()
    assert [a["name"] for a in listed] == ["helper"]
    models = server.client.get("/v1/models", headers=_bearer(key)).json()["data"]
    assert "acme/helper" in [m["id"] for m in models]


def test_a_pinned_adapter_stays_resident_and_follows_promotions(
    live_server: ServerFactory, make_package: PackageFactory,
) -> None:
    server = live_server(admin_token=ADMIN, dev_mode=False, max_loras=2)
    key = create_tenant(server, "acme")
    for index, name in enumerate(("kept", "other1", "other2", "other3")):
        upload(server, "acme", name, make_package(name, seed=index))
    upload(server, "acme", "kept", make_package("kept-v2", seed=9))
    pinned = server.client.put("/admin/adapters/acme/kept/pin", headers=ADMIN_HEADERS).json()
    assert pinned["pinned"] is True and pinned["residency"]["in_slot"] == ["1"]
    for name in ("other1", "other2", "other3", "other1"):  # one free slot, taking turns
        predict(server, key, f"acme/{name}")
    info = server.client.get("/admin/adapters/acme/kept", headers=ADMIN_HEADERS).json()
    assert info["residency"]["in_slot"] == ["1"]
    promoted = server.client.post("/admin/adapters/acme/kept/promote", headers=ADMIN_HEADERS,
                                  json={"version": 2}).json()
    assert promoted["residency"]["in_slot"] == ["2"]  # the pin moved; v1 may be evicted
    predict(server, key, "acme/other2")
    info = server.client.get("/admin/adapters/acme/kept", headers=ADMIN_HEADERS).json()
    assert info["residency"]["in_slot"] == ["2"]
    server.client.delete("/admin/adapters/acme/kept/pin", headers=ADMIN_HEADERS)
    for name in ("other1", "other3"):
        predict(server, key, f"acme/{name}")
    info = server.client.get("/admin/adapters/acme/kept", headers=ADMIN_HEADERS).json()
    assert info["pinned"] is False and info["residency"]["in_slot"] == []


def test_the_active_version_cannot_be_deleted(
    server: LiveServer, make_package: PackageFactory,
) -> None:
    create_tenant(server, "acme")
    upload(server, "acme", "helper", make_package("v1", seed=1))
    upload(server, "acme", "helper", make_package("v2", seed=2))
    refused = server.client.delete("/admin/adapters/acme/helper/versions/1",
                                   headers=ADMIN_HEADERS)
    assert refused.status_code == 409
    assert "active" in refused.json()["error"]["message"]
    deleted = server.client.delete("/admin/adapters/acme/helper/versions/2",
                                   headers=ADMIN_HEADERS)
    assert deleted.status_code == 204
    info = server.client.get("/admin/adapters/acme/helper", headers=ADMIN_HEADERS).json()
    assert [v["version"] for v in info["versions"]] == ["1"]
    busy = server.client.delete("/admin/tenants/acme", headers=ADMIN_HEADERS)
    assert busy.status_code == 409 and "acme/helper" in busy.json()["error"]["message"]


def test_a_refused_upload_names_the_problem_and_stores_nothing(
    server: LiveServer, make_package: PackageFactory,
) -> None:
    create_tenant(server, "acme")
    folder = make_package("bad")
    (folder / "adapter_model.bin").write_bytes(b"not really a pickle")
    response = upload(server, "acme", "helper", folder)
    assert response.status_code == 422
    assert "adapter_model.bin" in response.json()["error"]["message"]
    missing = server.client.get("/admin/adapters/acme/helper", headers=ADMIN_HEADERS)
    assert missing.status_code == 404
    unknown_tenant = upload(server, "nobody", "helper", make_package("ok"))
    assert unknown_tenant.status_code == 404
    assert "nobody" in unknown_tenant.json()["error"]["message"]
    metrics = server.client.get("/metrics", headers=ADMIN_HEADERS).text
    assert 'loraswap_adapter_rejections_total{reason="adapter_invalid"} 1.0' in metrics


def test_policy_can_forbid_the_base_model(server: LiveServer) -> None:
    key = create_tenant(server, "acme", allow_base_model=False)
    response = server.client.post("/v1/predict", headers=_bearer(key), json={"inputs": "hi"})
    assert response.status_code == 403
    assert "allow_base_model" in response.json()["error"]["message"]
    models = server.client.get("/v1/models", headers=_bearer(key)).json()["data"]
    assert all(m["loraswap"]["kind"] == "adapter" for m in models)


def test_request_rate_limit_answers_429_with_retry_after(server: LiveServer) -> None:
    """The limiter runs on a clock the test moves: at one instant only the burst (1) is
    admitted; a second later there is room for one more."""
    clock = FakeClock()
    server.app.state.loraswap.limiter.clock = clock  # the limiter every route uses
    key = create_tenant(server, "acme", requests_per_second=1)

    def send() -> httpx.Response:
        return server.client.post("/v1/predict", headers=_bearer(key),
                                  json={"inputs": "hi", "parameters": {"max_new_tokens": 1}})

    statuses = [send() for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 429, 429]
    assert statuses[1].headers["Retry-After"] == "1"
    assert "requests_per_second=1" in statuses[1].json()["error"]["message"]
    clock.advance(0.5)
    assert send().status_code == 429  # half a token is not a request
    clock.advance(0.5)
    assert send().status_code == 200


def test_concurrency_limit_answers_429(server: LiveServer) -> None:
    key = create_tenant(server, "acme", max_concurrent=1)
    # Stall the engine thread so that the first request stays in flight.
    engine = server.app.state.loraswap.components.engine
    release = threading.Event()
    engine.thread.call(release.wait)
    results: list[int] = []

    def first_request() -> None:
        response = httpx.post(f"{server.url}/v1/predict", headers=_bearer(key), timeout=60,
                              json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
        results.append(response.status_code)

    worker = threading.Thread(target=first_request)
    worker.start()
    try:
        # The first request is admitted (holds the tenant's one slot) and queued.
        deadline = time.monotonic() + 60
        while engine.scheduler.num_waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.scheduler.num_waiting == 1
        refused = server.client.post("/v1/predict", headers=_bearer(key), json={
            "inputs": "x", "parameters": {"max_new_tokens": 1}}, timeout=10)
    finally:
        release.set()
        worker.join()
    assert refused is not None and refused.status_code == 429
    assert "max_concurrent=1" in refused.json()["error"]["message"]
    assert results == [200]
    # The slot is given back once the request is done.
    assert predict(server, key, None)["outputs"][0]["tokens"] == 8


def test_every_kind_of_answer_gives_the_concurrency_slot_back(server: LiveServer) -> None:
    """With max_concurrent=1, each request below would be refused (429) if any earlier one
    had kept its slot: streamed and plain answers, native and OpenAI, and refusals."""
    key = create_tenant(server, "acme", max_concurrent=1)
    headers = _bearer(key)
    short = {"max_new_tokens": 2, "ignore_eos": True}
    calls: list[tuple[str, dict[str, Any], int]] = [
        ("/v1/predict", {"inputs": "hi", "parameters": short, "stream": True}, 200),
        ("/v1/predict", {"inputs": "hi", "parameters": short}, 200),
        ("/v1/predict", {"adapter": "acme/missing", "inputs": "hi"}, 404),
        ("/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 2,
                             "stream": True}, 200),
        ("/v1/chat/completions", {"model": "base", "max_tokens": 2,
                                  "messages": [{"role": "user", "content": "hi"}]}, 200),
        ("/v1/chat/completions", {"model": "acme/missing",
                                  "messages": [{"role": "user", "content": "hi"}]}, 404),
        ("/v1/predict", {"inputs": "hi", "parameters": short}, 200),
    ]
    for path, body, status in calls:
        response = server.client.post(path, headers=headers, json=body, timeout=60)
        assert response.status_code == status, (path, response.text)
        if body.get("stream"):  # the whole stream was read: its last event came
            assert response.text.rstrip().endswith(("data: [DONE]", "}")), response.text
            assert "event: done" in response.text or "data: [DONE]" in response.text


def test_every_documented_admin_route_refuses_a_caller_without_the_token(
        server: LiveServer) -> None:
    """Every /admin operation the OpenAPI document lists answers 401 without the admin
    token and 401 with a tenant's key, before looking at its (empty) body."""
    key = create_tenant(server, "acme")
    operations = [(method.upper(), path)
                  for path, item in server.client.get("/openapi.json").json()["paths"].items()
                  if path.startswith("/admin/") for method in item]
    assert len(operations) >= 10, operations  # tenants, keys, versions, promote, pins, ...
    for method, path in operations:
        url = (path.replace("{tenant}", "acme").replace("{name}", "helper")
               .replace("{version}", "1").replace("{run_id}", "x").replace("{id}", "x"))
        for headers in ({}, _bearer(key)):
            response = server.client.request(method, url, headers=headers)
            assert response.status_code == 401, (method, path, response.text)


@pytest.mark.parametrize("token", [None, "", "changeme", "short-token", "<your-token-here>"])
def test_the_service_refuses_a_missing_or_placeholder_admin_token(
    token: str | None, tmp_path: Path,
) -> None:
    settings = Settings(admin_token=token, dev_mode=False,
                        store_uri=(tmp_path / "store").as_uri())
    with pytest.raises(ConfigurationError, match="LORASWAP_ADMIN_TOKEN"):
        create_app(settings)


def test_dev_mode_opens_the_admin_api_without_a_token(live_server: ServerFactory) -> None:
    """Development mode (no admin token): /admin answers without one. Also shows the
    caller's environment is ignored: with LORASWAP_ADMIN_TOKEN exported this would be 401
    unless tests/conftest.py removed it."""
    server = live_server(dev_mode=True)
    created = server.client.post("/admin/tenants", json={"name": "acme"})
    assert created.status_code == 201, created.text
    listed = server.client.get("/admin/tenants")
    assert listed.status_code == 200 and "acme" in listed.text
