"""kill -9 in the middle of a promotion and of a key rotation (issue 13, crash safety).

The server runs with the test-only hook ``LORASWAP_FAULT_PAUSE_BEFORE_PUBLISH``: the
compare-and-swap write of the chosen key pauses after its temporary file is written and
before it is published, holding the key's lock; the test kills the process there
(SIGKILL), restarts it without the hook and checks that nothing is half-written (every
record parses, the interrupted change is simply absent, the lock died with the process) and
that nothing acknowledged before the crash was lost."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.fault_hooks import PAUSED_MESSAGE
from tests.service.conftest import PackageFactory, upload_files
from tests.service.processes import ServiceProcess
from tests.service.test_replicas import ADMIN_HEADERS, replica

pytestmark = pytest.mark.integration


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _works(server: ServiceProcess, key: str) -> bool:
    response = httpx.post(f"{server.url}/v1/predict", headers=_bearer(key), timeout=60,
                          json={"inputs": "hi", "parameters": {"max_new_tokens": 1}})
    return response.status_code == 200


def _wait_for_pause(server: ServiceProcess, key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f"{PAUSED_MESSAGE} {key}" in server.log():
            return
        time.sleep(0.05)
    raise AssertionError(f"the write of {key} never reached the fault hook:\n{server.log()}")


@pytest.mark.parametrize("crash_in", ["promotion", "rotation"])
def test_kill_9_mid_write_loses_nothing_acknowledged_and_leaves_nothing_half_written(
        tiny_base_dir: Path, tmp_path: Path, make_package: PackageFactory,
        crash_in: str) -> None:
    store_dir = tmp_path / "store"
    store_env = {"LORASWAP_STORE_URI": store_dir.as_uri()}
    setup = replica(tiny_base_dir, store_env, tmp_path, "setup").start()
    try:
        created = httpx.post(f"{setup.url}/admin/tenants", headers=ADMIN_HEADERS,
                             json={"name": "acme"})
        first_key = created.json()["api_key"]
        for seed in (1, 2):
            uploaded = httpx.post(f"{setup.url}/admin/adapters/acme/chat/versions",
                                  headers=ADMIN_HEADERS,
                                  files=upload_files(make_package(f"v{seed}", seed=seed)))
            assert uploaded.status_code == 201, uploaded.text
    finally:
        setup.stop()

    paused_key = ("adapters/acme/chat/state.json" if crash_in == "promotion"
                  else "tenants/acme.json")
    crashing = replica(tiny_base_dir, {**store_env, "LORASWAP_FAULT_PAUSE_BEFORE_PUBLISH":
                                       paused_key}, tmp_path, "crashing").start()
    try:
        # Acknowledged before the crash: the other kind of change.
        if crash_in == "promotion":
            rotated = httpx.post(f"{crashing.url}/admin/tenants/acme/keys/rotate",
                                 headers=ADMIN_HEADERS, timeout=60)
            assert rotated.status_code == 200, rotated.text
            live_key, dead_key = rotated.json()["api_key"], first_key
            request = ("POST", "/admin/adapters/acme/chat/promote", {"version": 2})
        else:
            promoted = httpx.post(f"{crashing.url}/admin/adapters/acme/chat/promote",
                                  headers=ADMIN_HEADERS, json={"version": 2}, timeout=60)
            assert promoted.status_code == 200, promoted.text
            live_key, dead_key = first_key, None
            request = ("POST", "/admin/tenants/acme/keys/rotate", None)
        answers: list[int] = []

        def send() -> None:
            try:
                answers.append(httpx.request(request[0], f"{crashing.url}{request[1]}",
                                             headers=ADMIN_HEADERS, json=request[2],
                                             timeout=120).status_code)
            except httpx.HTTPError:
                answers.append(-1)

        sender = threading.Thread(target=send)
        sender.start()
        _wait_for_pause(crashing, paused_key)
        assert list(store_dir.rglob(".*.tmp-*")), "the temporary file should exist"
        crashing.kill()
        sender.join(timeout=60)
        assert answers == [-1], "the interrupted change must not be acknowledged"
    finally:
        crashing.kill()

    restarted = replica(tiny_base_dir, store_env, tmp_path, "restarted").start()
    try:
        for record in [store_dir / "tenants" / "acme.json",
                       store_dir / "adapters" / "acme" / "chat" / "state.json"]:
            json.loads(record.read_text())  # whole, not half-written
        info = httpx.get(f"{restarted.url}/admin/adapters/acme/chat",
                         headers=ADMIN_HEADERS).json()
        assert info["active_version"] == (1 if crash_in == "promotion" else 2)
        assert _works(restarted, live_key), "an acknowledged key was lost"
        if dead_key is not None:
            assert not _works(restarted, dead_key), "a rotated-away key works again"
        # The lock held by the killed process is gone: both changes work now.
        promoted = httpx.post(f"{restarted.url}/admin/adapters/acme/chat/promote",
                              headers=ADMIN_HEADERS, json={"version": 2}, timeout=60)
        assert promoted.status_code == 200, promoted.text
        rotated = httpx.post(f"{restarted.url}/admin/tenants/acme/keys/rotate",
                             headers=ADMIN_HEADERS, timeout=60)
        assert rotated.status_code == 200, rotated.text
        assert _works(restarted, rotated.json()["api_key"])
    finally:
        restarted.stop()
