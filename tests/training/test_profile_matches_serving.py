"""profile.json measures what serving measures: the input lengths and the served embedding
training writes for its data are the token counts and pooled hidden states the service's
engine computes for the same texts (tiny model, fp32), so a live window of the training
distribution scores against a reference of the same quantities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from loraswap.service.api.classification import encode_input
from loraswap.service.api.prompts import PromptLimits
from loraswap.training.config import build_config
from loraswap.training.runner import run_training
from tests.service.engine.references import results_of, submit_classify
from tests.utils.engine import make_engine

# Two texts of different token lengths (so padding in a batch would show), one per label.
TEXTS = {"pos": "the sea is lovely and bright today", "neg": "dull"}
LIMITS = PromptLimits(max_input_tokens=64, max_model_len=128, max_new_tokens=1)


async def test_lengths_and_served_embedding_equal_what_the_engine_measures(
        tiny_base_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "mood.csv"
    data.write_text("text,label\n" + "".join(
        f"{TEXTS['pos']},pos\n{TEXTS['neg']},neg\n" for _ in range(30)), encoding="utf-8")
    config = build_config({}, {
        "task": "seq-cls", "data": data, "output": tmp_path / "pkg",
        "base_model": tiny_base_dir, "max_steps": 20, "batch_size": 8, "progress": False,
        "learning_rate": 5e-3, "precision": "fp32"})
    folder = run_training(config).output
    profile = json.loads((folder / "profile.json").read_text())

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    ids = {label: encode_input(tokenizer, text, LIMITS, offsets=False).ids
           for label, text in TEXTS.items()}
    assert len(ids["pos"]) > len(ids["neg"]) + 3
    engine = make_engine(tiny_base_dir)
    engine.start()
    try:
        results = dict(zip(TEXTS, await results_of([
            await submit_classify(engine, "mood", folder, ids[label], label)
            for label in TEXTS]), strict=True))
    finally:
        engine.stop()

    # Training profiled its training split: how many of each text, from its label counts.
    counts = {label: int(n) for label, n in profile["label_distribution"]["counts"].items()}
    assert set(counts) == set(TEXTS) and min(counts.values()) > 0, counts
    total = sum(counts.values())

    # Input lengths: the histogram holds exactly the token counts serving reports.
    lengths = profile["input_length_tokens"]
    assert lengths["count"] == total
    assert lengths["min"] == min(r.prompt_tokens for r in results.values())
    assert lengths["max"] == max(r.prompt_tokens for r in results.values())
    edges, binned = lengths["histogram"]["edges"], lengths["histogram"]["counts"]
    expected_bins = [0] * len(binned)
    for label, result in results.items():
        inner = [e for e in edges[1:-1] if e <= result.prompt_tokens]
        expected_bins[len(inner)] += counts[label]
    assert binned == expected_bins

    # Served embedding: per dimension, the count-weighted mean and standard deviation of
    # the two vectors the engine pools for those requests.
    served = {label: torch.tensor(r.embedding, dtype=torch.float64)
              for label, r in results.items() if r.embedding is not None}
    assert set(served) == set(TEXTS)
    share = {label: counts[label] / total for label in TEXTS}
    mean = sum(share[label] * served[label] for label in TEXTS)
    std = (served["pos"] - served["neg"]).abs() * (share["pos"] * share["neg"]) ** 0.5
    section = profile["embedding_served"]
    # 15 held-out rows are too few for a reference of their own: the training inputs serve.
    assert section["split"] == "training"
    assert section["sample_size"] == total
    torch.testing.assert_close(torch.tensor(section["mean"], dtype=torch.float64), mean,
                               rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(torch.tensor(section["std"], dtype=torch.float64), std,
                               rtol=1e-3, atol=1e-4)
    # And the adapter matters: the base-model embedding differs from the served one, so a
    # profile taken with the adapter off would not match.
    base_mean = torch.tensor(profile["embedding"]["mean"], dtype=torch.float64)
    assert float((base_mean - mean).abs().max()) > 1e-2, float((base_mean - mean).abs().max())
    assert pytest.approx(1.0) == sum(share.values())


def test_a_classifier_with_enough_held_out_inputs_takes_its_served_embedding_from_them(
        tiny_base_dir: Path, tmp_path: Path) -> None:
    """An adapter fits its training inputs, so their hidden states are no fair reference for
    new traffic: with at least 64 held-out inputs the served-embedding reference is taken
    from those (the same inputs as the predicted-label and confidence reference), never
    from the training split."""
    words = ["sea", "sky", "tree", "road", "cat", "lamp", "door", "hill", "rain", "bread"]
    rows = [f"the {words[i % 10]} number {i} is {'lovely' if i % 2 else 'dull'},"
            f"{'pos' if i % 2 else 'neg'}\n" for i in range(300)]
    data = tmp_path / "mood.csv"
    data.write_text("text,label\n" + "".join(rows), encoding="utf-8")
    config = build_config({}, {
        "task": "seq-cls", "data": data, "output": tmp_path / "pkg",
        "base_model": tiny_base_dir, "max_steps": 2, "batch_size": 8, "progress": False,
        "precision": "fp32"})
    profile = json.loads((run_training(config).output / "profile.json").read_text())
    held_out = profile["predicted_label_distribution"]["sample"]["held_out"]
    training = sum(profile["label_distribution"]["counts"].values())
    assert held_out >= 64 and training > held_out, (held_out, training)
    section = profile["embedding_served"]
    assert (section["split"], section["sample_size"]) == ("held-out", held_out)
