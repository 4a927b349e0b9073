"""`loraswap serve` never reaches the network: no connection or name lookup beyond
loopback, with the Hugging Face offline switches unset (tiny model; the real-model
variant is in test_real_model_server.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.service.processes import ServiceProcess

pytestmark = pytest.mark.integration

OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def test_serving_makes_no_connection_beyond_loopback(tiny_base_dir: Path, tmp_path: Path,
                                                     make_adapter) -> None:  # type: ignore[no-untyped-def]
    make_adapter("writer", seed=3)
    log = tmp_path / "attempts.log"
    env = {"LORASWAP_BASE_MODEL": str(tiny_base_dir), "LORASWAP_QUANTIZATION": "fp32",
           "LORASWAP_DEVICE": "cpu", "LORASWAP_DEV_MODE": "true",
           "LORASWAP_ADAPTER_DIR": str(tmp_path / "adapters"),
           "LORASWAP_STORE_URI": (tmp_path / "store").as_uri(),
           "LORASWAP_ADAPTER_CACHE_DIR": str(tmp_path / "cache"), "LORASWAP_THREADS": "1"}
    server = ServiceProcess(env, tmp_path, unset=OFFLINE_SWITCHES, launcher=(
        "-m", "tests.utils.patched_serve", "--deny-network", str(log), "--")).start()
    try:
        for adapter in (None, "writer"):
            answer = httpx.post(f"{server.url}/v1/predict", timeout=60, json={
                "adapter": adapter, "inputs": "hi", "parameters": {"max_new_tokens": 2}})
            assert answer.status_code == 200, answer.text
        assert httpx.get(f"{server.url}/v1/models", timeout=30).status_code == 200
    finally:
        server.stop()
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", attempts
