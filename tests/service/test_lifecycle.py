"""Real `loraswap serve` processes: readiness waits for pinned adapters, SIGTERM drains under
load and exits 0, and metrics can live on their own listener."""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import PackageFactory, free_port, upload_files
from tests.service.processes import ServiceProcess

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

ADMIN = "lifecycle-admin-" + "3" * 32
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def serve_env(tiny_base_dir: Path, tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    """Settings of one replica on the shared folder store under ``tmp_path``."""
    return {
        "LORASWAP_BASE_MODEL": str(tiny_base_dir), "LORASWAP_QUANTIZATION": "fp32",
        "LORASWAP_DEVICE": "cpu", "LORASWAP_ADMIN_TOKEN": ADMIN,
        "LORASWAP_STORE_URI": (tmp_path / "store").as_uri(),
        "LORASWAP_ADAPTER_CACHE_DIR": str(tmp_path / f"cache-{name}"),
        "LORASWAP_REGISTRY_REFRESH_SECONDS": "0.5", "LORASWAP_MAX_MODEL_LEN": "256",
        "LORASWAP_MAX_BATCH_SIZE": "8", "LORASWAP_THREADS": "1", **extra,
    }


def register(url: str, name: str, folder: Path) -> None:
    """Register ``acme/<name>`` version 1 and pin it."""
    uploaded = httpx.post(f"{url}/admin/adapters/acme/{name}/versions", headers=ADMIN_HEADERS,
                          files=upload_files(folder), timeout=60)
    assert uploaded.status_code == 201, uploaded.text
    pinned = httpx.put(f"{url}/admin/adapters/acme/{name}/pin", headers=ADMIN_HEADERS)
    assert pinned.status_code == 200, pinned.text


def test_a_replica_started_after_a_pin_is_ready_only_once_the_pinned_adapters_are_resident(
        tiny_base_dir: Path, tmp_path: Path, make_package: PackageFactory) -> None:
    a = ServiceProcess(serve_env(tiny_base_dir, tmp_path, "a"), tmp_path).start()
    # B has a single slot: of two pinned adapters only one can be resident.
    b = ServiceProcess(serve_env(tiny_base_dir, tmp_path, "b", LORASWAP_MAX_LORAS="1"),
                       tmp_path)
    try:
        httpx.post(f"{a.url}/admin/tenants", headers=ADMIN_HEADERS, json={"name": "acme"})
        register(a.url, "helper", make_package("helper", seed=1))
        register(a.url, "other", make_package("other", seed=2))
        b.start(wait_for="/healthz")
        deadline = time.monotonic() + 60
        while True:  # B loads the model and the pins it can
            status = httpx.get(f"{b.url}/admin/status", headers=ADMIN_HEADERS).json()
            if status["status"] == "pinning" and len(status["pins_pending"]) == 1:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        time.sleep(2.5)  # several registry rounds: still not ready, and says why
        ready = httpx.get(f"{b.url}/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "pinning"
        assert "acme" not in ready.text  # no tenant data in the open probe
        pending = status["pins_pending"][0]

        unpinned = httpx.delete(f"{a.url}/admin/adapters/{pending}/pin", headers=ADMIN_HEADERS)
        assert unpinned.status_code == 200
        deadline = time.monotonic() + 30
        while httpx.get(f"{b.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, b.log()
            time.sleep(0.1)
        detail = httpx.get(f"{b.url}/admin/status", headers=ADMIN_HEADERS).json()
        still_pinned = ({"acme/helper", "acme/other"} - {pending}).pop()
        assert f"{still_pinned}@1" in detail["engine"]["adapters_in_slots"]
    finally:
        a.stop()
        b.stop()


def _load(url: str, results: list[dict[str, Any]], stop: threading.Event) -> None:
    """Send requests back to back until ``stop``; record what each one got."""
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = client.post(f"{url}/v1/predict", headers=ADMIN_HEADERS, json={
                    "inputs": "the quick brown fox", "raw": True,
                    "parameters": {"max_new_tokens": 48, "ignore_eos": True}})
            except httpx.ConnectError:  # the listener is gone: never accepted
                results.append({"outcome": "refused", "started": started})
                return
            except httpx.HTTPError as exc:  # accepted, then cut: a failed request
                results.append({"outcome": f"failed: {exc!r}", "started": started})
                return
            retry_after = response.headers.get("retry-after")
            results.append({"outcome": response.status_code, "started": started,
                            "ended": time.monotonic(), "retry_after": retry_after})
            if retry_after is not None:  # a well-behaved client waits as told
                time.sleep(float(retry_after))


def _long_stream(url: str, streaming: threading.Event, events: list[str]) -> None:
    """One streamed generation of 200 tokens: it is in flight when SIGTERM arrives."""
    body = {"inputs": "once upon a time", "raw": True, "stream": True,
            "parameters": {"max_new_tokens": 200, "ignore_eos": True}}
    with httpx.Client(timeout=120) as client, client.stream(
            "POST", f"{url}/v1/predict", headers=ADMIN_HEADERS, json=body) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                events.append(line.removeprefix("event:").strip())
                streaming.set()


def test_sigterm_under_load_finishes_accepted_requests_and_exits_0(
        tiny_base_dir: Path, tmp_path: Path) -> None:
    env = serve_env(tiny_base_dir, tmp_path, "drain", LORASWAP_DRAIN_SECONDS="60",
                    LORASWAP_API_KEYS=ADMIN)
    server = ServiceProcess(env, tmp_path).start()
    assert server.process is not None
    results: list[dict[str, Any]] = []
    stop, streaming = threading.Event(), threading.Event()
    stream_events: list[str] = []
    threads = [threading.Thread(target=_load, args=(server.url, results, stop))
               for _ in range(3)]
    threads.append(threading.Thread(target=_long_stream,
                                    args=(server.url, streaming, stream_events)))
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while sum(r["outcome"] == 200 for r in results) < 6 or not streaming.is_set():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    readiness_during_drain = httpx.get(f"{server.url}/readyz", timeout=10)
    exit_code = server.process.wait(timeout=90)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)

    assert exit_code == 0, server.log()
    assert readiness_during_drain.status_code == 503
    assert readiness_during_drain.json()["status"] == "draining"
    failed = [r for r in results if r["outcome"] not in (200, 503, "refused")]
    assert not failed, failed
    refused = [r for r in results if r["outcome"] == 503]
    assert all(r["retry_after"] == "1" for r in refused)
    # The stream accepted before the signal ran to its end.
    assert stream_events[-1] == "done" and stream_events.count("token") == 200, stream_events
    assert any(r["outcome"] == 200 and r["started"] < signalled < r["ended"] for r in results)
    drained = re.search(r"drained in ([0-9.]+) s \(0 requests still in flight\)", server.log())
    assert drained, server.log()
    logger.info("measured drain time: %s s", drained.group(1))  # in docs/deploy.md


def test_metrics_listener_serves_metrics_and_the_api_port_does_not(
        tiny_base_dir: Path, tmp_path: Path) -> None:
    metrics_port = free_port()
    env = serve_env(tiny_base_dir, tmp_path, "metrics", LORASWAP_METRICS_PORT=str(metrics_port))
    server = ServiceProcess(env, tmp_path).start()
    try:
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status_code == 200
        assert "loraswap_num_requests_waiting" in scraped.text
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/readyz").status_code == 200
        assert httpx.get(f"{server.url}/metrics").status_code == 404
        # Nothing but metrics and probes on the metrics listener.
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/admin/status",
                         headers=ADMIN_HEADERS).status_code == 404
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 0, server.log()
