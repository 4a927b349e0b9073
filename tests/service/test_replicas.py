"""Two real service processes on one store (filesystem, then S3), and kill -9 in the
registry's crash windows (upload, promotion)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.s3_server import S3Server
from tests.service.conftest import PackageFactory, upload_files
from tests.service.processes import ServiceProcess, start_together, stop_together
from tests.utils.polling import wait_for

pytestmark = pytest.mark.integration

ADMIN = "replica-admin-" + "5" * 32
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(params=["file", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment naming the shared store: a folder, or a bucket on a real S3 server."""
    if request.param == "file":
        return {"LORASWAP_STORE_URI": (tmp_path / "store").as_uri()}
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.create_bucket(f"replicas-{time.monotonic_ns()}")
    return {"LORASWAP_STORE_URI": f"s3://{bucket}/loraswap", **server.env()}


def replica(tiny_base_dir: Path, store_env: dict[str, str], tmp_path: Path,
            name: str, launcher: tuple[str, ...] = ("-m", "loraswap.cli")) -> ServiceProcess:
    """A service process on the shared store with its own local adapter cache."""
    env = {
        "LORASWAP_BASE_MODEL": str(tiny_base_dir), "LORASWAP_QUANTIZATION": "fp32",
        "LORASWAP_DEVICE": "cpu", "LORASWAP_ADMIN_TOKEN": ADMIN,
        "LORASWAP_ADAPTER_CACHE_DIR": str(tmp_path / f"cache-{name}"),
        "LORASWAP_REGISTRY_REFRESH_SECONDS": "1", "LORASWAP_MAX_MODEL_LEN": "256",
        "LORASWAP_MAX_BATCH_SIZE": "16", "LORASWAP_THREADS": "1", **store_env,
    }
    return ServiceProcess(env, tmp_path, launcher)


@pytest.fixture
def replicas(tiny_base_dir: Path, store_env: dict[str, str],
             tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Replicas A and B, started together on one store (as a Deployment's replicas)."""
    a = replica(tiny_base_dir, store_env, tmp_path, "a")
    b = replica(tiny_base_dir, store_env, tmp_path, "b")
    try:
        start_together(a, b)
        yield a, b
    finally:
        stop_together(a, b)



def _predict(url: str, key: str) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/predict", timeout=60,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"adapter": "acme/helper", "inputs": "the quick brown fox",
                                "parameters": {"max_new_tokens": 6, "ignore_eos": True}})
    return {"status": response.status_code, **(response.json() if response.content else {})}


def test_replicas_share_registrations_and_promotions_without_failed_requests(
    replicas: tuple[ServiceProcess, ServiceProcess], make_package: PackageFactory,
) -> None:
    a, b = replicas
    created = httpx.post(f"{a.url}/admin/tenants", headers=ADMIN_HEADERS, json={"name": "acme"})
    key = created.json()["api_key"]
    for seed in (1, 2):
        response = httpx.post(f"{a.url}/admin/adapters/acme/helper/versions",
                              headers=ADMIN_HEADERS, timeout=60,
                              files=upload_files(make_package(f"v{seed}", seed=seed)))
        assert response.status_code == 201, response.text

    # Registered (and the tenant created) on A, served by B at once (lazy lookup on a miss).
    first = _predict(b.url, key)
    assert first["status"] == 200 and first["adapter_version"] == "1", first

    results: list[dict[str, Any]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            results.append(_predict(a.url, key))

    def count(version: str) -> int:
        return sum(r.get("adapter_version") == version for r in list(results))

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(load)
        # Conditions, not durations: load is running on v1, then A sees the promotion made
        # on B (within its refresh interval, 1 s; the deadlines only stop a hung test).
        wait_for(lambda: count("1") >= 8, 120, what="load before the promotion")
        promoted = httpx.post(f"{b.url}/admin/adapters/acme/helper/promote",
                              headers=ADMIN_HEADERS, json={"version": 2})
        assert promoted.status_code == 200, promoted.text
        wait_for(lambda: count("2") >= 8, 120, what="replica A to see the promotion")
        stop.set()

    assert results and all(r["status"] == 200 for r in results), [
        r for r in results if r["status"] != 200][:3]
    texts: dict[str, set[str]] = {}
    for r in results:
        texts.setdefault(r["adapter_version"], set()).add(r["outputs"][0]["text"])
    assert set(texts) == {"1", "2"}
    # Each version always produced its own answer: the version named is the one that ran.
    assert len(texts["1"]) == len(texts["2"]) == 1 and texts["1"] != texts["2"]
    # Once A answered with v2 it never went back to v1 (no flapping between views).
    first_v2 = next(i for i, r in enumerate(results) if r["adapter_version"] == "2")
    assert all(r["adapter_version"] == "2" for r in results[first_v2 + 4:])


# The fault-injecting launcher (tests/utils/patched_serve.py): the process SIGKILLs itself
# just before the store write named by the pattern.
MANIFEST_OF_V2 = r"/versions/00000002/loraswap\.json$"
STATE = r"/state\.json$"


def crashing_replica(tiny_base_dir: Path, store_env: dict[str, str], tmp_path: Path,
                     pattern: str, skip: int = 0) -> ServiceProcess:
    """A replica that dies (SIGKILL, by itself) before its ``skip``-th put matching
    ``pattern``."""
    return replica(tiny_base_dir, store_env, tmp_path, "a", launcher=(
        "-m", "tests.utils.patched_serve", "--crash-before-put", pattern,
        "--crash-skip", str(skip), "--"))


def _versions(url: str) -> tuple[str | None, list[str]]:
    info = httpx.get(f"{url}/admin/adapters/acme/helper", headers=ADMIN_HEADERS).json()
    return info["active_version"], [v["version"] for v in info["versions"]]


def _expect_crash(server: ServiceProcess, send: Callable[[], httpx.Response]) -> None:
    """``send`` must die with the server (no answer), and the server by SIGKILL."""
    with pytest.raises(httpx.TransportError):
        send()
    assert server.wait_killed() == -signal.SIGKILL, server.log()


def test_kill_9_between_blobs_and_manifest_and_during_promotion_keeps_the_previous_state(
    tiny_base_dir: Path, tmp_path: Path, make_package: PackageFactory,
) -> None:
    """The process dies (1) after an upload's blobs are in the store but before its
    manifest, (2) in a promotion before ``state.json`` is written: after each restart the
    store lists the state before the crash, and a retry succeeds."""
    store_env = {"LORASWAP_STORE_URI": (tmp_path / "store").as_uri()}
    versions_url = "/admin/adapters/acme/helper/versions"
    v1, v2 = make_package("v1", seed=1), make_package("v2", seed=2, rank=16)

    server = crashing_replica(tiny_base_dir, store_env, tmp_path, MANIFEST_OF_V2).start()
    try:
        httpx.post(f"{server.url}/admin/tenants", headers=ADMIN_HEADERS, json={"name": "acme"})
        first = httpx.post(f"{server.url}{versions_url}", headers=ADMIN_HEADERS, timeout=60,
                           files=upload_files(v1))
        assert first.status_code == 201, first.text
        _expect_crash(server, lambda: httpx.post(
            f"{server.url}{versions_url}", headers=ADMIN_HEADERS, timeout=60,
            files=upload_files(v2)))
    finally:
        server.kill()
    blobs = {p.name for p in (tmp_path / "store").rglob("versions/00000002/*")}
    assert blobs and "loraswap.json" not in blobs, "the crash did not land between blobs " \
        "and manifest"

    # Restart: only v1 exists; the retry takes the next number (2 was claimed by the crash)
    # and is not activated; then the promotion crashes before state.json is written.
    server = crashing_replica(tiny_base_dir, store_env, tmp_path, STATE).start()
    try:
        assert _versions(server.url) == ("1", ["1"])
        retry = httpx.post(f"{server.url}{versions_url}", headers=ADMIN_HEADERS, timeout=60,
                           files=upload_files(v2))
        assert retry.status_code == 201, retry.text
        assert retry.json()["version"] == "3"
        _expect_crash(server, lambda: httpx.post(
            f"{server.url}/admin/adapters/acme/helper/promote", headers=ADMIN_HEADERS,
            json={"version": 3}, timeout=60))
    finally:
        server.kill()

    restarted = replica(tiny_base_dir, store_env, tmp_path, "a").start()
    try:
        assert _versions(restarted.url) == ("1", ["1", "3"])
        promoted = httpx.post(f"{restarted.url}/admin/adapters/acme/helper/promote",
                              headers=ADMIN_HEADERS, json={"version": 3})
        assert promoted.status_code == 200, promoted.text
        assert _versions(restarted.url) == ("3", ["1", "3"])
    finally:
        restarted.stop()
