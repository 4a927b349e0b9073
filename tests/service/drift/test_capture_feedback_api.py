"""Drift over HTTP on the tiny model: gauges per active version, capture to Parquet,
feedback with its 4xx answers, live accuracy, and series removed after a promotion."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from loraswap.adapters.package import build_manifest, read_manifest, write_manifest
from loraswap.adapters.store import open_store
from loraswap.jobs.training_data import read_parquet_batches
from tests.conftest import write_classifier_adapter
from tests.service.conftest import LiveServer, ServerFactory, upload_files
from tests.service.drift.helpers import owner, profile
from tests.utils.polling import wait_for

ADMIN = "adm-" + "7" * 40
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
TEXTS = ["great movie", "awful plot and worse acting", "a charming little film",
         "boring", "I loved every minute", "not worth the ticket"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def classifier_package(base_dir: Path, folder: Path, seed: int) -> Path:
    """A seq-cls package with a profile.json sized for the tiny model (hidden 64)."""
    write_classifier_adapter(base_dir, folder, task="seq-cls",
                             labels=["negative", "neutral", "positive"], seed=seed)
    document = profile()
    document["embedding_served"] = tiny_embedding_profile()
    document["label_distribution"] = {"shares": {"negative": 0.4, "neutral": 0.2,
                                                 "positive": 0.4}}
    (folder / "profile.json").write_text(json.dumps(document))
    manifest = read_manifest(folder)
    write_manifest(folder, build_manifest(
        folder, task=manifest.task, labels=manifest.labels, base_model=manifest.base_model,
        attention=manifest.attention))
    return folder


def tiny_embedding_profile() -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    vectors = rng.normal(0, 1, (64, 64))
    basis = np.eye(64)[:4]
    return {"mean": vectors.mean(0).tolist(),
            "pca": {"components": basis.tolist(),
                    "reference_projections": (vectors @ basis.T).tolist()}}



def metric_lines(server: LiveServer, name: str) -> list[str]:
    text = server.client.get("/metrics", headers=ADMIN_HEADERS).text
    return [line for line in text.splitlines() if line.startswith(name + "{")]


@pytest.fixture
def server(live_server: ServerFactory) -> LiveServer:
    return live_server(admin_token=ADMIN, dev_mode=False, drift_enabled=True,
                       drift_min_samples=4, drift_window_size=50,
                       drift_score_interval_seconds=0.1, drift_min_feedback=2,
                       # Long: batches are written by feedback (which must not wait for
                       # the interval) or at shutdown, never by the timer in these tests.
                       drift_capture_flush_seconds=600)


def create_tenant(server: LiveServer, name: str, capture: str) -> str:
    response = server.client.post("/admin/tenants", headers=ADMIN_HEADERS,
                                  json={"name": name, "policy": {"capture": capture}})
    assert response.status_code == 201, response.text
    return str(response.json()["api_key"])


def register(server: LiveServer, tenant: str, name: str, folder: Path,
             activate: bool = True) -> None:
    response = server.client.post(f"/admin/adapters/{tenant}/{name}/versions",
                                  headers=ADMIN_HEADERS, files=upload_files(folder),
                                  data={"activate": str(activate).lower()})
    assert response.status_code in (200, 201), response.text


def predict(server: LiveServer, key: str, adapter: str) -> dict[str, Any]:
    response = server.client.post("/v1/predict", headers=bearer(key),
                                  json={"adapter": adapter, "inputs": TEXTS})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def feedback(server: LiveServer, key: str, **body: Any) -> httpx.Response:
    return server.client.post("/v1/feedback", headers=bearer(key), json=body)


def test_drift_capture_feedback_and_retirement_over_http(
        server: LiveServer, tiny_base_dir: Path, tmp_path: Path) -> None:
    server.wait_ready()
    acme = create_tenant(server, "acme", "all")
    other = create_tenant(server, "other", "off")
    register(server, "acme", "sentiment", classifier_package(tiny_base_dir,
                                                             tmp_path / "p1", seed=1))
    register(server, "other", "mood", classifier_package(tiny_base_dir,
                                                         tmp_path / "p2", seed=2))
    answer = predict(server, acme, "acme/sentiment")

    # Gauges of the active version, every signal the profile supports.
    scores = wait_for(lambda: metric_lines(server, "loraswap_drift_score"))
    signals = {line.split('signal="')[1].split('"')[0] for line in scores}
    assert signals == {"input_length", "confidence", "predicted_label", "embedding"}
    assert all('version="1"' in line for line in scores)
    samples = metric_lines(server, "loraswap_drift_window_samples")
    assert samples == ['loraswap_drift_window_samples{adapter="acme/sentiment",tenant="acme",'
                       'version="1"} 6.0']

    # Feedback: right and wrong labels, then the 4xx answers.
    predicted = [o["label"] for o in answer["outputs"]]
    wrong = "neutral" if predicted[1] != "neutral" else "negative"
    ok = feedback(server, acme, prediction_id=answer["id"], label=predicted[0])
    assert ok.status_code == 200, ok.text
    assert ok.json()["correct"] is True and ok.json()["version"] == "1"
    assert feedback(server, acme, prediction_id=answer["id"], index=1,
                    label=wrong).json()["correct"] is False
    accuracy = wait_for(lambda: metric_lines(server, "loraswap_live_accuracy"))
    assert accuracy[0].endswith(" 0.5")
    unknown = feedback(server, acme, prediction_id="pred-" + "0" * 24, label="positive")
    assert unknown.status_code == 404
    assert feedback(server, other, prediction_id=answer["id"],
                    label="positive").status_code == 404
    mine = predict(server, other, "other/mood")
    uncaptured = feedback(server, other, prediction_id=mine["id"], label="positive")
    assert uncaptured.status_code == 409 and "not captured" in uncaptured.text
    assert feedback(server, acme, prediction_id=answer["id"],
                    text="a text").status_code == 400
    not_a_class = feedback(server, acme, prediction_id=answer["id"], label="furious")
    assert not_a_class.status_code == 400
    message = not_a_class.json()["error"]["message"]
    assert "'furious' is not a class" in message and '"neutral"' in message

    # Captured inputs and feedback are Parquet batches in the store.
    store = open_store(server.settings.store_uri)
    acme_data = owner(store, "acme")  # captures/{name}.{id}/…: the tenant's own prefix
    captured = wait_for(lambda: read_parquet_batches(store, f"captures/{acme_data}/sentiment/"))
    assert sorted(r["input"] for r in captured) == sorted(TEXTS)
    rows = wait_for(lambda: read_parquet_batches(store, f"feedback/{acme_data}/sentiment/"))
    assert {(r["index"], r["label"]) for r in rows} == {(0, predicted[0]), (1, wrong)}
    assert not read_parquet_batches(store, "captures/other/")

    # A promoted version serves: the old version's series go, the new one's come.
    register(server, "acme", "sentiment", classifier_package(tiny_base_dir, tmp_path / "p3",
                                                             seed=3))
    wait_for(lambda: predict(server, acme, "acme/sentiment")["adapter_version"] == "2")
    def old_series() -> list[str]:
        return [line for name in ("loraswap_drift_score", "loraswap_drift_window_samples",
                                  "loraswap_live_accuracy", "loraswap_feedback_total")
                for line in metric_lines(server, name)
                if 'version="1"' in line and 'adapter="sentiment"' in line]

    try:
        wait_for(lambda: not old_series(), timeout=30)
    except AssertionError:
        raise AssertionError(f"series of version 1 remain: {old_series()}") from None
    assert wait_for(lambda: metric_lines(server, "loraswap_drift_window_samples"))


def test_generations_are_captured_and_take_text_feedback(
        server: LiveServer, make_package: Callable[..., Path]) -> None:
    server.wait_ready()
    acme = create_tenant(server, "acme", "all")
    register(server, "acme", "writer", make_package("writer", seed=4))
    response = server.client.post("/v1/predict", headers=bearer(acme), json={
        "adapter": "acme/writer", "inputs": "the quick brown fox",
        "parameters": {"max_new_tokens": 4, "ignore_eos": True}})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert feedback(server, acme, prediction_id=answer["id"],
                    label="positive").status_code == 400
    ok = feedback(server, acme, prediction_id=answer["id"], text="jumps over the lazy dog")
    assert ok.status_code == 200, ok.text
    assert ok.json()["correct"] is None
    store = open_store(server.settings.store_uri)
    # Acknowledged means written: the feedback batch is in the store already, not after
    # the next flush interval (a crash after the 200 loses nothing).
    acme_data = owner(store, "acme")
    rows = read_parquet_batches(store, f"feedback/{acme_data}/writer/")
    assert rows and rows[0]["text"] == "jumps over the lazy dog"
    captured = wait_for(lambda: read_parquet_batches(store, f"captures/{acme_data}/writer/"))
    assert json.loads(captured[0]["output"])["text"] == answer["outputs"][0]["text"]
    # No profile.json: the window is tracked, but no score is exported (absent, not 0).
    assert wait_for(lambda: metric_lines(server, "loraswap_drift_window_samples"))
    assert not [line for line in metric_lines(server, "loraswap_drift_score")
                if 'adapter="acme/writer"' in line]


def test_feedback_finds_a_prediction_captured_by_another_replica(
        live_server: ServerFactory, tiny_base_dir: Path, tmp_path: Path) -> None:
    """Two replicas on one store: the one that answered writes the batched index (within
    its flush interval); the other, which never saw the answer, finds it by the id alone."""
    settings = {"admin_token": ADMIN, "dev_mode": False, "drift_enabled": True,
                "drift_capture_flush_seconds": 0.2}
    first = live_server(**settings)
    second = live_server(**settings, adapter_cache_dir=tmp_path / "cache-2")
    acme = create_tenant(first, "acme", "all")
    other = create_tenant(first, "other", "off")
    register(first, "acme", "sentiment", classifier_package(tiny_base_dir,
                                                            tmp_path / "p1", seed=1))
    answer = predict(first, acme, "acme/sentiment")
    label = answer["outputs"][2]["label"]

    def accepted() -> dict[str, Any] | None:
        response = feedback(second, acme, prediction_id=answer["id"], index=2, label=label)
        return dict(response.json()) if response.status_code == 200 else None

    assert wait_for(accepted, timeout=30) == {"prediction_id": answer["id"], "index": 2,
                         "adapter": "acme/sentiment", "version": "1", "correct": True}
    # Still 404 for an input the answer did not have, another tenant and an unknown id.
    assert feedback(second, acme, prediction_id=answer["id"], index=len(TEXTS),
                    label=label).status_code == 404
    assert feedback(second, other, prediction_id=answer["id"], index=2,
                    label=label).status_code == 404
    assert feedback(second, acme, prediction_id="pred-" + "0" * 24,
                    label=label).status_code == 404
    store = open_store(first.settings.store_uri)
    acme_data = owner(store, "acme")
    rows = wait_for(lambda: read_parquet_batches(store, f"feedback/{acme_data}/sentiment/"))
    assert [(r["prediction_id"], r["index"], r["input"]) for r in rows] == [
        (answer["id"], 2, TEXTS[2])]
    # One index object for the whole answer, not one per input.
    assert len(store.list("capture-index/")) == 1
