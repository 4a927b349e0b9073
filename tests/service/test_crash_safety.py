"""kill -9 in the middle of a promotion, a key rotation and feedback writes (issue 13).

The server runs with the test-only hook ``LORASWAP_FAULT_PAUSE_BEFORE_PUBLISH``: the
compare-and-swap write of the chosen key pauses after its temporary file is written and
before it is published, holding the key's lock; the test kills the process there
(SIGKILL), restarts it without the hook and checks that nothing is half-written (every
record parses, the interrupted change is simply absent, the lock died with the process) and
that nothing acknowledged before the crash was lost."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from loraswap.adapters.store import open_store
from loraswap.jobs.training_data import read_parquet_batches
from loraswap.service.fault_hooks import PAUSED_MESSAGE
from tests.service.conftest import PackageFactory, upload_files
from tests.service.drift.test_capture_feedback_api import TEXTS, classifier_package
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
        assert info["active_version"] == ("1" if crash_in == "promotion" else "2")
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


# ------------------------------------------------------------------------ feedback writes
FEEDBACK_ENV = {"LORASWAP_DRIFT_ENABLED": "true", "LORASWAP_DRIFT_MIN_FEEDBACK": "2",
                "LORASWAP_DRIFT_MIN_SAMPLES": "4",
                # Long: batches are written by feedback itself (written before the 200).
                "LORASWAP_DRIFT_CAPTURE_FLUSH_SECONDS": "600"}


def _feedback(server: ServiceProcess, key: str, prediction_id: str, index: int,
              label: str) -> int:
    """The status of one feedback, -1 when the connection died first."""
    try:
        return httpx.post(f"{server.url}/v1/feedback", headers=_bearer(key), timeout=60,
                          json={"prediction_id": prediction_id, "index": index,
                                "label": label}).status_code
    except httpx.HTTPError:
        return -1


def _batches_whole(store_dir: Path, prefix: str) -> list[dict[str, object]]:
    """Every row of every batch under ``prefix``; each visible batch must be whole
    Parquet (a half-written one raises here)."""
    store = open_store(store_dir.as_uri())
    for key in store.list(prefix):
        assert key.endswith(".parquet"), key
        pq.read_table(io.BytesIO(store.get(key)))
    return read_parquet_batches(store, prefix)


def _acknowledged_in_store(store_dir: Path, prediction_id: str) -> set[tuple[int, str]]:
    return {(int(str(r["index"])), str(r["label"]))
            for r in _batches_whole(store_dir, "feedback/")
            if r["prediction_id"] == prediction_id}


def test_kill_9_during_feedback_writes_loses_no_acknowledged_feedback(
        tiny_base_dir: Path, tmp_path: Path) -> None:
    """Feedback is acknowledged only once its batch is published: a server killed right
    after three 200s, and another killed while a fourth feedback's batch is written (its
    temporary file fsynced, not yet published), leave every acknowledged row in the store,
    no visible half-written batch, and a restarted server that takes feedback and serves
    live accuracy again."""
    store_dir = tmp_path / "store"
    env = {"LORASWAP_STORE_URI": store_dir.as_uri(), **FEEDBACK_ENV}
    first = replica(tiny_base_dir, env, tmp_path, "first").start()
    try:
        created = httpx.post(f"{first.url}/admin/tenants", headers=ADMIN_HEADERS,
                             json={"name": "acme", "policy": {"capture": "all"}})
        key = created.json()["api_key"]
        package = classifier_package(tiny_base_dir, tmp_path / "pkg", seed=3)
        uploaded = httpx.post(f"{first.url}/admin/adapters/acme/sentiment/versions",
                              headers=ADMIN_HEADERS, files=upload_files(package),
                              data={"activate": "true"}, timeout=60)
        assert uploaded.status_code in (200, 201), uploaded.text
        answer = httpx.post(f"{first.url}/v1/predict", headers=_bearer(key), timeout=60,
                            json={"adapter": "acme/sentiment", "inputs": TEXTS}).json()
        pid, labels = answer["id"], [o["label"] for o in answer["outputs"]]
        acknowledged = {(i, labels[i]) for i in range(3)
                        if _feedback(first, key, pid, i, labels[i]) == 200}
        assert len(acknowledged) == 3
    finally:
        first.kill()  # right after the 200s: no shutdown hook writes anything more
    assert _acknowledged_in_store(store_dir, pid) == acknowledged, \
        "feedback acknowledged just before kill -9 was lost"

    paused = replica(tiny_base_dir, {**env, "LORASWAP_FAULT_PAUSE_BEFORE_PUBLISH":
                                     "feedback/*"}, tmp_path, "paused").start()
    try:
        answers: list[int] = []
        sender = threading.Thread(target=lambda: answers.append(
            _feedback(paused, key, pid, 3, labels[3])))
        sender.start()
        _wait_for_pause(paused, "feedback/acme.")  # feedback/{name}.{id}/sentiment/batch-…
        assert list((store_dir / "feedback").rglob(".*.tmp-*")), "no temporary batch"
        paused.kill()
        sender.join(timeout=60)
        assert answers == [-1], "feedback whose batch was not published was acknowledged"
    finally:
        paused.kill()

    assert _acknowledged_in_store(store_dir, pid) == acknowledged, \
        "the interrupted feedback is visible, or acknowledged feedback was lost"
    _batches_whole(store_dir, "captures/")

    restarted = replica(tiny_base_dir, env, tmp_path, "restarted").start()
    try:
        for index in (4, 5):  # captured before both crashes: still takes feedback
            assert _feedback(restarted, key, pid, index, labels[index]) == 200
        scrape = httpx.get(f"{restarted.url}/metrics", headers=ADMIN_HEADERS).text
        accuracy = [line for line in scrape.splitlines()
                    if line.startswith("loraswap_live_accuracy{") and "sentiment" in line]
        assert len(accuracy) == 1 and accuracy[0].endswith(" 1.0"), accuracy
    finally:
        restarted.kill()
    rows = _batches_whole(store_dir, "feedback/")
    assert {r["index"] for r in rows} == {0, 1, 2, 4, 5}
