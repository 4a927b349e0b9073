"""kill -9 in the middle of a promotion, a key rotation and feedback writes (issues 13, 26),
on a folder store and on a real S3 server (SeaweedFS).

The server runs with the test-only hook ``LORASWAP_FAULT_PAUSE_BEFORE_PUBLISH``: the write
of the chosen key pauses just before it is published (folder: its temporary file written
and fsynced, the compare-and-swap holding the key's lock; S3: the ``PutObject`` request,
conditional or not, sent to the server but for the last byte of its body); the test kills
the process there (SIGKILL), restarts it without the hook and checks that nothing is
half-written (every record parses, the interrupted change is simply absent, no lock of the
dead process blocks the restarted one) and that nothing acknowledged before the crash was
lost."""

from __future__ import annotations

import io
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import FileSystemStore, ObjectStore, S3Store
from loraswap.adapters.validation import ValidationLimits
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.jobs.training_data import read_parquet_batches
from loraswap.service.fault_hooks import PAUSED_MESSAGE
from loraswap.tenants.directory import TenantDirectory
from tests.s3_server import S3Server
from tests.service.conftest import PackageFactory, upload_files
from tests.service.drift.test_capture_feedback_api import TEXTS, classifier_package
from tests.service.processes import ServiceProcess
from tests.service.test_replicas import ADMIN_HEADERS, replica

pytestmark = pytest.mark.integration


@dataclass
class CrashStore:
    """The store the crashing servers share: the environment naming it, and the test's own
    view of it (no fault hook)."""

    env: dict[str, str]
    store: ObjectStore

    def assert_write_in_flight(self, prefix: str, pause_line: str) -> None:
        """The paused write has started and is unpublished: the folder store's temporary
        file exists; the S3 server has been sent the request, all of its body but the last
        byte."""
        if isinstance(self.store, FileSystemStore):
            assert list((self.store.root / prefix).rglob(".*.tmp-*")), \
                "the temporary file should exist"
        else:
            sent = re.search(r"\((\d+) of (\d+) body bytes sent", pause_line)
            assert sent and 0 < int(sent[1]) == int(sent[2]) - 1, pause_line


@pytest.fixture(params=["fs", "s3"])
def crash_store(request: pytest.FixtureRequest, tmp_path: Path) -> CrashStore:
    """A folder, or a bucket of its own on the session's SeaweedFS server."""
    if request.param == "fs":
        root = tmp_path / "store"
        return CrashStore({"LORASWAP_STORE_URI": root.as_uri()}, FileSystemStore(root))
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.create_bucket(f"crash-{uuid.uuid4().hex[:12]}")
    return CrashStore({"LORASWAP_STORE_URI": f"s3://{bucket}/loraswap", **server.env()},
                      S3Store(bucket, "loraswap", client=server.client()))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _works(server: ServiceProcess, key: str) -> bool:
    response = httpx.post(f"{server.url}/v1/predict", headers=_bearer(key), timeout=60,
                          json={"inputs": "hi", "parameters": {"max_new_tokens": 1}})
    return response.status_code == 200


def _wait_for_pause(server: ServiceProcess, key: str, timeout: float = 60) -> str:
    """The hook's log line, once the write of ``key`` (a prefix of it) is paused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log().splitlines():
            if f"{PAUSED_MESSAGE} {key}" in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"the write of {key} never reached the fault hook:\n{server.log()}")


def _seed_tenant_and_two_versions(store: ObjectStore, tiny_base_dir: Path, tmp_path: Path,
                                  make_package: PackageFactory) -> str:
    """Tenant ``acme`` and adapter ``chat`` with versions 1 (active) and 2, written through
    the library the admin API calls (the crash is what is tested, not the set-up: a server
    started only for it cost a process start per test). Returns the tenant's key."""
    _, key = TenantDirectory(store).create("acme")
    registry = AdapterRegistry(store, BaseModelFingerprint.from_folder(tiny_base_dir),
                               ValidationLimits(), tmp_path / "seed-cache")
    for seed in (1, 2):
        registry.register("acme", "chat", make_package(f"v{seed}", seed=seed))
    return key


@pytest.mark.parametrize("crash_in", ["promotion", "rotation"])
def test_kill_9_mid_write_loses_nothing_acknowledged_and_leaves_nothing_half_written(
        tiny_base_dir: Path, tmp_path: Path, make_package: PackageFactory,
        crash_store: CrashStore, crash_in: str) -> None:
    store_env = crash_store.env
    first_key = _seed_tenant_and_two_versions(crash_store.store, tiny_base_dir, tmp_path,
                                              make_package)

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
        paused = _wait_for_pause(crashing, paused_key)
        crash_store.assert_write_in_flight(paused_key.split("/")[0], paused)
        crashing.kill()
        sender.join(timeout=60)
        assert answers == [-1], "the interrupted change must not be acknowledged"
    finally:
        crashing.kill()

    restarted = replica(tiny_base_dir, store_env, tmp_path, "restarted").start()
    try:
        for record in ["tenants/acme.json", "adapters/acme/chat/state.json"]:
            json.loads(crash_store.store.get(record))  # whole, not half-written
        info = httpx.get(f"{restarted.url}/admin/adapters/acme/chat",
                         headers=ADMIN_HEADERS).json()
        assert info["active_version"] == ("1" if crash_in == "promotion" else "2")
        assert _works(restarted, live_key), "an acknowledged key was lost"
        if dead_key is not None:
            assert not _works(restarted, dead_key), "a rotated-away key works again"
        # Nothing of the killed process blocks the restarted one (the folder store's lock
        # died with it; S3's compare-and-swap takes none): both changes work now.
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


def _batches_whole(store: ObjectStore, prefix: str) -> list[dict[str, object]]:
    """Every row of every batch under ``prefix``; each visible batch must be whole
    Parquet (a half-written one raises here)."""
    for key in store.list(prefix):
        assert key.endswith(".parquet"), key
        pq.read_table(io.BytesIO(store.get(key)))
    return read_parquet_batches(store, prefix)


def _acknowledged_in_store(store: ObjectStore, prediction_id: str) -> set[tuple[int, str]]:
    return {(int(str(r["index"])), str(r["label"]))
            for r in _batches_whole(store, "feedback/")
            if r["prediction_id"] == prediction_id}


def test_kill_9_during_feedback_writes_loses_no_acknowledged_feedback(
        tiny_base_dir: Path, tmp_path: Path, crash_store: CrashStore) -> None:
    """Feedback is acknowledged only once its batch is published: a server killed right
    after three 200s, and another killed while a fourth feedback's batch is written (paused
    by the hook just before it is published), leave every acknowledged row in the store,
    no visible half-written batch, and a restarted server that takes feedback and serves
    live accuracy again."""
    store = crash_store.store
    env = {**crash_store.env, **FEEDBACK_ENV}
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
    assert _acknowledged_in_store(store, pid) == acknowledged, \
        "feedback acknowledged just before kill -9 was lost"

    paused = replica(tiny_base_dir, {**env, "LORASWAP_FAULT_PAUSE_BEFORE_PUBLISH":
                                     "feedback/*"}, tmp_path, "paused").start()
    try:
        answers: list[int] = []
        sender = threading.Thread(target=lambda: answers.append(
            _feedback(paused, key, pid, 3, labels[3])))
        sender.start()
        line = _wait_for_pause(paused, "feedback/acme.")  # feedback/{name}.{id}/sentiment/…
        crash_store.assert_write_in_flight("feedback", line)
        paused.kill()
        sender.join(timeout=60)
        assert answers == [-1], "feedback whose batch was not published was acknowledged"
    finally:
        paused.kill()

    assert _acknowledged_in_store(store, pid) == acknowledged, \
        "the interrupted feedback is visible, or acknowledged feedback was lost"
    _batches_whole(store, "captures/")

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
    rows = _batches_whole(store, "feedback/")
    assert {r["index"] for r in rows} == {0, 1, 2, 4, 5}
