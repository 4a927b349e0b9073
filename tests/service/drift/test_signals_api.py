"""The generation and token-cls drift signals over HTTP, with packages trained by
`loraswap train` on the tiny model (so the profile.json the trainer writes is the one the
service reads), and the OpenAI endpoints feeding drift, capture and feedback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loraswap.adapters.store import open_store
from loraswap.jobs.training_data import read_parquet_batches
from loraswap.training.config import build_config
from loraswap.training.runner import run_training
from tests.service.conftest import LiveServer, ServerFactory
from tests.service.drift.helpers import owner
from tests.service.drift.test_capture_feedback_api import (
    ADMIN,
    ADMIN_HEADERS,
    bearer,
    create_tenant,
    feedback,
    metric_lines,
    register,
)
from tests.utils.polling import wait_for

WORDS = ["fox", "dog", "cat", "sea", "wind", "paris", "france", "colors", "haiku", "waves"]


@pytest.fixture(scope="module")
def trained(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A causal-lm and a token-cls package, each with enough data for every reference
    (>= 100 inputs for histograms, >= 32 prompts for reference generations)."""
    root = tmp_path_factory.mktemp("signals")
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps({
        "instruction": f"write a haiku about the {WORDS[i % 10]} and the {WORDS[i // 10 % 10]}",
        "input": "", "output": "the quick brown fox jumps over the lazy dog"}) + "\n"
        for i in range(120)), encoding="utf-8")
    conll = root / "ner.tsv"
    conll.write_text("".join(
        f"the\tO\nzzqxv\tB-Disease\ndisease\tI-Disease\nof\tO\nthe\tO\n{WORDS[i % 10]}\tO\n\n"
        for i in range(120)), encoding="utf-8")
    packages = {}
    for task, data in (("causal-lm", sft), ("token-cls", conll)):
        cfg = build_config({}, {
            "task": task, "data": data, "output": root / task, "base_model": tiny_base_dir,
            "max_steps": 2, "batch_size": 8, "progress": False, "learning_rate": 5e-3,
            "precision": "fp32"})
        packages[task] = run_training(cfg).output
    return packages


@pytest.fixture
def server(live_server: ServerFactory) -> LiveServer:
    return live_server(admin_token=ADMIN, dev_mode=False, drift_enabled=True,
                       drift_min_samples=4, drift_window_size=50,
                       drift_score_interval_seconds=0.1, drift_capture_flush_seconds=600)


def scores_of(server: LiveServer, adapter: str) -> dict[tuple[str, str], float]:
    """``(signal, method) -> value`` of the adapter's exported drift scores."""
    out = {}
    for line in metric_lines(server, "loraswap_drift_score"):
        if f'adapter="{adapter}"' in line:
            signal = line.split('signal="')[1].split('"')[0]
            method = line.split('method="')[1].split('"')[0]
            out[(signal, method)] = float(line.rsplit(" ", 1)[1])
    return out


def captured_rows(server: LiveServer, at_least: int) -> list[dict[str, Any]] | None:
    """The capture rows of acme/writer once there are ``at_least`` (None before)."""
    store = open_store(server.settings.store_uri)
    rows = read_parquet_batches(store, f"captures/{owner(store, 'acme')}/writer/")
    return rows if len(rows) >= at_least else None


def post(server: LiveServer, key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = server.client.post(path, headers=bearer(key), json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_generation_and_word_tag_gauges_appear_for_trained_adapters(
        server: LiveServer, trained: dict[str, Path]) -> None:
    server.wait_ready()
    acme = create_tenant(server, "acme", "off")
    register(server, "acme", "writer", trained["causal-lm"])
    register(server, "acme", "tagger", trained["token-cls"])
    prompts = [f"write a haiku about the {w} and the sea" for w in WORDS[:4]]
    post(server, acme, "/v1/predict", {"adapter": "acme/writer", "inputs": prompts})
    post(server, acme, "/v1/predict", {"adapter": "acme/tagger", "inputs": [
        f"the zzqxv disease of the {w}" for w in WORDS[:4]]})

    writer = wait_for(lambda: scores_of(server, "acme/writer") or None)
    assert {("output_length", "psi"), ("token_logprob", "psi"),
            ("embedding", "mmd"), ("input_length", "psi")} <= writer.keys()
    assert not {("confidence", "psi"), ("predicted_label", "psi")} & writer.keys()
    tagger = wait_for(lambda: scores_of(server, "acme/tagger") or None)
    assert {("predicted_label", "psi"), ("predicted_label", "js"), ("confidence", "psi"),
            ("embedding", "mmd"), ("input_length", "psi")} <= tagger.keys()
    assert all(value >= 0 for value in [*writer.values(), *tagger.values()])

    view = server.client.get("/admin/drift/acme/writer", headers=ADMIN_HEADERS).json()
    assert view["comparable_generations"] == 4
    assert "output_length" not in view["absent_signals"]
    tags = server.client.get("/admin/drift/acme/tagger", headers=ADMIN_HEADERS).json()
    assert tags["label_reference"] == "predictions"


def test_openai_answers_feed_drift_capture_and_feedback(
        server: LiveServer, trained: dict[str, Path]) -> None:
    server.wait_ready()
    acme = create_tenant(server, "acme", "all")
    register(server, "acme", "writer", trained["causal-lm"])
    # OpenAI's default temperature (1): compared with the sampled reference generations.
    completion = post(server, acme, "/v1/completions", {
        "model": "acme/writer", "prompt": ["the quick brown fox", "the lazy dog"],
        "max_tokens": 64})
    chat = post(server, acme, "/v1/chat/completions", {
        "model": "acme/writer", "messages": [{"role": "user", "content": "name three colors"}],
        "max_tokens": 64})
    streamed = server.client.post("/v1/completions", headers=bearer(acme), json={
        "model": "acme/writer", "prompt": "paris is the capital", "stream": True,
        "max_tokens": 64})
    assert streamed.status_code == 200 and "[DONE]" in streamed.text

    # Four answers (two choices, a chat, a stream): four inputs in the window.
    wait_for(lambda: [line for line in metric_lines(server, "loraswap_drift_window_samples")
                      if 'adapter="acme/writer"' in line and line.endswith(" 4.0")])
    writer = wait_for(lambda: scores_of(server, "acme/writer") or None)
    assert {("output_length", "psi"), ("token_logprob", "psi")} <= writer.keys()

    # Feedback by the OpenAI answer's id (text: a generation; a label is refused).
    ok = feedback(server, acme, prediction_id=chat["id"], text="red, yellow and blue")
    assert ok.status_code == 200, ok.text
    assert ok.json()["adapter"] == "acme/writer"
    assert feedback(server, acme, prediction_id=completion["id"],
                    label="positive").status_code == 400

    # Captured under the OpenAI ids, with the whole text (a stream's too); feedback wrote
    # the batches that waited.
    rows = wait_for(lambda: captured_rows(server, 4))
    by_id = {(r["prediction_id"], r["index"]): r for r in rows}
    assert json.loads(by_id[(completion["id"], 1)]["output"])["text"] == \
        completion["choices"][1]["text"]
    assert json.loads(by_id[(chat["id"], 0)]["input"])[0]["content"] == "name three colors"
    [stream_row] = [r for r in rows if r["prediction_id"] not in (completion["id"], chat["id"])]
    assert stream_row["prediction_id"].startswith("cmpl-")
    assert stream_row["input"] == "paris is the capital"
    assert json.loads(stream_row["output"])["text"] == "".join(
        json.loads(line[6:])["choices"][0]["text"] for line in streamed.text.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"])
