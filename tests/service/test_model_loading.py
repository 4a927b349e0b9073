"""While the base model loads the service answers, but with 503: readiness and requests."""

from __future__ import annotations

import threading
from pathlib import Path

from loraswap.base_model.loading import LoadedBaseModel, Quantization, load_base_model
from loraswap.service.settings import Settings
from tests.service.conftest import ServerFactory


def test_503_while_the_model_loads_then_200(live_server: ServerFactory,
                                            tiny_base_dir: Path) -> None:
    """A loader held on an event: /healthz is up, /readyz and inference say 503 (not a
    hang, not a 500) until the model is in; then the same request succeeds."""
    loading, release = threading.Event(), threading.Event()

    def held_loader(settings: Settings) -> LoadedBaseModel:
        loading.set()
        assert release.wait(120), "the test never released the loader"
        return load_base_model(tiny_base_dir, Quantization.FP32, "cpu")

    server = live_server(loader=held_loader, wait=False)
    try:
        assert loading.wait(60)
        ready = server.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "loading", ready.text
        assert server.client.get("/healthz").status_code == 200
        body = {"inputs": "the quick brown fox", "parameters": {"max_new_tokens": 2}}
        early = server.client.post("/v1/predict", json=body)
        assert early.status_code == 503, early.text
        completion = server.client.post("/v1/completions", json={
            "model": "base", "prompt": "the quick", "max_tokens": 2})
        assert completion.status_code == 503, completion.text
    finally:
        release.set()
    server.wait_ready()
    late = server.client.post("/v1/predict", json=body)
    assert late.status_code == 200, late.text
