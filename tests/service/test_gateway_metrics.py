"""The gateway protocol's gauges (as an InferencePool endpoint picker reads them) and probes
that keep tenant data away from tenants."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loraswap.service.gateway_metrics import (
    ADAPTER_RESIDENT,
    KV_CACHE_USAGE,
    LORA_INFO,
    RUNNING,
    WAITING,
    GatewayCollector,
)
from tests.conftest import AdapterFactory
from tests.service.conftest import ServerFactory
from tests.utils.engine import make_engine


def samples(client: httpx.Client, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` in one scrape of ``/metrics``."""
    text = client.get("/metrics").text
    return [(dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def test_gauges_report_running_adapters_and_load_as_the_protocol_says(
        live_server: ServerFactory, make_adapter: AdapterFactory) -> None:
    make_adapter("m1")
    make_adapter("m2")
    server = live_server(max_batch_size=4, max_loras=3)
    idle_info = samples(server.client, LORA_INFO)
    assert idle_info[0][0] == {"running_lora_adapters": "", "waiting_lora_adapters": "",
                               "max_lora": "3"}
    assert samples(server.client, KV_CACHE_USAGE)[0][1] == 0.0

    started = threading.Event()

    def stream(adapter: str) -> None:
        body = {"adapter": adapter, "inputs": "hello", "stream": True,
                "parameters": {"max_new_tokens": 200, "ignore_eos": True}}
        with httpx.Client(base_url=server.url, timeout=60) as client, \
                client.stream("POST", "/v1/predict", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    started.set()

    threads = [threading.Thread(target=stream, args=(name,)) for name in ("m2", "m1")]
    for thread in threads:
        thread.start()
    before = time.time()
    deadline = time.monotonic() + 30
    while True:  # both in the running batch at once
        info = samples(server.client, LORA_INFO)
        if info[0][0]["running_lora_adapters"] == "m1,m2":
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.02)
    labels, value = info[0]
    assert " " not in labels["running_lora_adapters"]
    assert value >= before - 1  # the value is the report's Unix time
    assert samples(server.client, RUNNING)[0][1] == 2
    assert samples(server.client, WAITING)[0][1] == 0
    # Blocks of the pool (4 x 256 tokens) that two sequences of at most ~230 tokens hold:
    # some, and under half (rows in use would have said 2 of 4).
    assert 0 < samples(server.client, KV_CACHE_USAGE)[0][1] < 0.5
    resident = {(lab["adapter"], lab["tier"]): v
                for lab, v in samples(server.client, ADAPTER_RESIDENT)}
    assert resident[("m1", "slot")] == resident[("m2", "slot")] == 1
    assert resident[("m1", "host")] == 1
    for thread in threads:
        thread.join(timeout=60)
    assert samples(server.client, LORA_INFO)[0][0]["running_lora_adapters"] == ""


def test_readyz_shows_no_adapter_names_nor_model_path(
        live_server: ServerFactory, make_adapter: AdapterFactory) -> None:
    make_adapter("secret-tenant-adapter")
    admin = "status-admin-" + "7" * 32
    server = live_server(dev_mode=False, admin_token=admin)
    ready = server.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert "secret-tenant-adapter" not in ready.text
    assert str(server.settings.base_model) not in ready.text
    assert server.client.get("/admin/status").status_code == 401
    detail = server.client.get("/admin/status", headers={"Authorization": f"Bearer {admin}"})
    assert detail.json()["adapters_available"] == ["secret-tenant-adapter"]
    assert detail.json()["model"]["path"] == str(server.settings.base_model)


def _gauges(collector: GatewayCollector) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {family.name: [(dict(s.labels), s.value) for s in family.samples]
            for family in collector.collect()}


def test_lora_info_is_reported_from_the_first_scrape_while_loading() -> None:
    gauges = _gauges(GatewayCollector(lambda: None, max_loras=7, clock=lambda: 123.0))
    assert gauges[LORA_INFO] == [({"running_lora_adapters": "", "waiting_lora_adapters": "",
                                   "max_lora": "7"}, 123.0)]
    assert gauges[KV_CACHE_USAGE] == [({}, 0.0)]


def test_kv_gauge_is_the_share_of_pool_blocks_held(tiny_base_dir: Path) -> None:
    engine = make_engine(tiny_base_dir)
    collector = GatewayCollector(lambda: engine, max_loras=4)
    held = engine.pool.allocate(3)
    assert held is not None
    assert _gauges(collector)[KV_CACHE_USAGE] == [({}, 3 / engine.pool.num_blocks)]
    engine.pool.release(held)
    assert _gauges(collector)[KV_CACHE_USAGE] == [({}, 0.0)]
