"""Two real service processes on one store (filesystem, then S3), and a kill -9 mid-upload."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.s3_server import S3Server
from tests.service.conftest import PackageFactory, upload_files
from tests.service.processes import ServiceProcess

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
            name: str) -> ServiceProcess:
    """A service process on the shared store with its own local adapter cache."""
    env = {
        "LORASWAP_BASE_MODEL": str(tiny_base_dir), "LORASWAP_QUANTIZATION": "fp32",
        "LORASWAP_DEVICE": "cpu", "LORASWAP_ADMIN_TOKEN": ADMIN,
        "LORASWAP_ADAPTER_CACHE_DIR": str(tmp_path / f"cache-{name}"),
        "LORASWAP_REGISTRY_REFRESH_SECONDS": "1", "LORASWAP_MAX_MODEL_LEN": "256",
        "LORASWAP_MAX_BATCH_SIZE": "16", "LORASWAP_THREADS": "1", **store_env,
    }
    return ServiceProcess(env, tmp_path)


@pytest.fixture
def replicas(tiny_base_dir: Path, store_env: dict[str, str],
             tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Replicas A and B, started one after the other."""
    a = replica(tiny_base_dir, store_env, tmp_path, "a").start()
    b = replica(tiny_base_dir, store_env, tmp_path, "b")
    try:
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


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
            results.append({**_predict(a.url, key), "at": time.monotonic()})

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(load)
        time.sleep(1.5)
        promoted_at = time.monotonic()
        promoted = httpx.post(f"{b.url}/admin/adapters/acme/helper/promote",
                              headers=ADMIN_HEADERS, json={"version": 2})
        assert promoted.status_code == 200, promoted.text
        deadline = promoted_at + 15
        while time.monotonic() < deadline and not any(
                r.get("adapter_version") == "2" for r in results):
            time.sleep(0.1)
        time.sleep(1.0)  # keep the load on a little after the switch
        stop.set()

    assert results and all(r["status"] == 200 for r in results), [
        r for r in results if r["status"] != 200][:3]
    texts: dict[str, set[str]] = {}
    for r in results:
        texts.setdefault(r["adapter_version"], set()).add(r["outputs"][0]["text"])
    assert set(texts) == {"1", "2"}
    # Each version always produced its own answer: the version named is the one that ran.
    assert len(texts["1"]) == len(texts["2"]) == 1 and texts["1"] != texts["2"]
    switched = min(r["at"] for r in results if r["adapter_version"] == "2")
    assert switched - promoted_at < 5.0, "replica A took too long to see the promotion"


def _slow_body(content: bytes, sent: threading.Event,
               killed: threading.Event) -> Iterator[bytes]:
    half = len(content) // 2
    yield content[:half]
    sent.set()
    killed.wait(60)  # the server is killed while it waits for the rest
    yield content[half:]


def test_kill_9_during_an_upload_leaves_the_previous_state(
    tiny_base_dir: Path, tmp_path: Path, make_package: PackageFactory,
) -> None:
    store_env = {"LORASWAP_STORE_URI": (tmp_path / "store").as_uri()}
    server = replica(tiny_base_dir, store_env, tmp_path, "a").start()
    try:
        httpx.post(f"{server.url}/admin/tenants", headers=ADMIN_HEADERS, json={"name": "acme"})
        v1 = httpx.post(f"{server.url}/admin/adapters/acme/helper/versions",
                        headers=ADMIN_HEADERS, files=upload_files(make_package("v1", seed=1)))
        assert v1.status_code == 201
        v2_folder = make_package("v2", seed=2, rank=16)
        request = httpx.Request("POST", f"{server.url}/admin/adapters/acme/helper/versions",
                                headers=ADMIN_HEADERS, files=upload_files(v2_folder))
        body = request.read()
        sent, killed = threading.Event(), threading.Event()
        failures: list[BaseException] = []

        def upload() -> None:
            try:
                httpx.post(request.url, headers=dict(request.headers), timeout=120,
                           content=_slow_body(body, sent, killed))
            except httpx.HTTPError as exc:
                failures.append(exc)

        uploader = threading.Thread(target=upload)
        uploader.start()
        assert sent.wait(30)
        time.sleep(0.5)  # the first half is in the server's hands
        server.kill()
        killed.set()
        uploader.join(timeout=60)
        assert failures, "the interrupted upload must fail on the client side"
    finally:
        server.kill()

    restarted = replica(tiny_base_dir, store_env, tmp_path, "a").start()
    try:
        info = httpx.get(f"{restarted.url}/admin/adapters/acme/helper",
                         headers=ADMIN_HEADERS).json()
        assert info["active_version"] == 1 and [v["version"] for v in info["versions"]] == [1]
        retry = httpx.post(f"{restarted.url}/admin/adapters/acme/helper/versions",
                           headers=ADMIN_HEADERS, files=upload_files(v2_folder))
        assert retry.status_code == 201, retry.text
        assert retry.json()["version"] == 2
    finally:
        restarted.stop()
