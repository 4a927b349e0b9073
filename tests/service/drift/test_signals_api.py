"""The generation and token-cls drift signals over HTTP, with packages trained by
`loraswap train` on the tiny model (so the profile.json the trainer writes is the one the
service reads), and the OpenAI endpoints feeding drift, capture and feedback."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
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
    csv_data = root / "mood.csv"
    csv_data.write_text("text,label\n" + "".join(
        f"the {WORDS[i % 10]} is lovely and bright {i},pos\n"
        f"a dull grey {WORDS[i % 10]} again {i},neg\n" for i in range(60)), encoding="utf-8")
    conll = root / "ner.tsv"
    conll.write_text("".join(
        f"the\tO\nzzqxv\tB-Disease\ndisease\tI-Disease\nof\tO\nthe\tO\n{WORDS[i % 10]}\tO\n\n"
        for i in range(120)), encoding="utf-8")
    packages = {}
    for task, data in (("causal-lm", sft), ("token-cls", conll), ("seq-cls", csv_data)):
        cfg = build_config({}, {
            "task": task, "data": data, "output": root / task, "base_model": tiny_base_dir,
            # The classifier learns its two labels, so both sides hold both.
            "max_steps": 30 if task == "seq-cls" else 2, "batch_size": 8,
            "progress": False, "learning_rate": 5e-3, "precision": "fp32"})
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


def psi_of(reference: dict[str, float], live: dict[str, int]) -> float:
    """PSI as docs/drift.md states it, written out here: shares floored at 1e-4 and
    renormalised, then sum of (live - ref) * ln(live / ref)."""
    names = sorted(reference)
    ref = np.maximum(np.array([reference[n] for n in names]) / sum(reference.values()), 1e-4)
    cur = np.array([live.get(n, 0) for n in names], dtype=float) / sum(live.values())
    ref, cur = ref / ref.sum(), np.maximum(cur, 1e-4) / np.maximum(cur, 1e-4).sum()
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def js_of(reference: dict[str, float], live: dict[str, int]) -> float:
    """Jensen-Shannon distance, base 2 (square root of the divergence)."""
    names = sorted(reference)
    p = np.array([reference[n] for n in names]) / sum(reference.values())
    q = np.array([live.get(n, 0) for n in names], dtype=float) / sum(live.values())
    m = (p + q) / 2
    divergence = sum(a * math.log2(a / b) for x in (p, q) for a, b in zip(x, m, strict=True)
                     if a > 0) / 2
    return math.sqrt(max(divergence, 0.0))


def test_label_gauges_equal_the_scores_computed_from_the_profile_and_the_answers(
        server: LiveServer, trained: dict[str, Path]) -> None:
    """The seq-cls label gauges are not just present: each equals the PSI / JS distance
    computed here from the predicted-label shares training wrote in profile.json and the
    labels the service answered, and the window gauge counts the inputs sent."""
    server.wait_ready()
    acme = create_tenant(server, "acme", "off")
    register(server, "acme", "mood", trained["seq-cls"])
    texts = [f"the {w} is lovely and bright" for w in WORDS] + [
        f"a dull grey {w} today" for w in WORDS[:5]]
    answer = post(server, acme, "/v1/predict", {"adapter": "acme/mood", "inputs": texts})
    live = Counter(str(o["label"]) for o in answer["outputs"])
    profile = json.loads((trained["seq-cls"] / "profile.json").read_text())
    reference = profile["predicted_label_distribution"]["shares"]
    assert set(live) == set(reference) and min(reference.values()) > 0.1, (live, reference)

    # Scored once the whole answer is in the window (the drift thread may score a part).
    wait_for(lambda: window_samples(server, "acme/mood") == [len(texts)], 30,
             what="the window to hold every input",
             on_fail=lambda: str(window_samples(server, "acme/mood")))
    expected = {("predicted_label", "psi"): psi_of(reference, live),
                ("predicted_label", "js"): js_of(reference, live)}

    def label_scores() -> dict[tuple[str, str], float]:
        scores = scores_of(server, "acme/mood")
        return {k: v for k, v in scores.items() if k in expected}

    wait_for(lambda: all(label_scores().get(k) == pytest.approx(v, rel=1e-6, abs=1e-9)
                         for k, v in expected.items()), 10,
             what="the label gauges to equal the scores computed here",
             on_fail=lambda: f"gauges {label_scores()}, computed {expected}, live {live}, "
                             f"reference {reference}")


def window_samples(server: LiveServer, adapter: str) -> list[float]:
    """The ``loraswap_drift_window_samples`` values of the adapter."""
    return [float(line.rsplit(" ", 1)[1])
            for line in metric_lines(server, "loraswap_drift_window_samples")
            if f'adapter="{adapter}"' in line]


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
