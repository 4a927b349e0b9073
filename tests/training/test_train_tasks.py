"""Training each task kind end to end on the tiny model: the package a user gets."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.adapters.package import (
    PROFILE_FILE,
    AttentionMode,
    TaskKind,
    package_file_digests,
    read_manifest,
)
from loraswap.base_model.loading import weights_sha256
from loraswap.training.config import TrainConfig
from loraswap.training.runner import run_training
from tests.training.conftest import NEGATIVE, POSITIVE

ConfigFactory = Callable[..., TrainConfig]


@pytest.mark.parametrize(
    ("task", "fixture", "labels", "metric_keys"),
    [
        ("seq-cls", "csv_data", ["neg", "pos"], {"accuracy", "macro_f1", "eval_loss"}),
        ("token-cls", "conll_data", ["O", "B-Disease", "I-Disease"],
         {"precision", "recall", "f1", "eval_loss"}),
        ("causal-lm", "sft_data", None, {"eval_loss", "perplexity"}),
    ],
)
def test_package_is_complete_and_readable(
    task: str, fixture: str, labels: list[str] | None, metric_keys: set[str],
    make_config: ConfigFactory, tiny_base_dir: Path, request: pytest.FixtureRequest,
) -> None:
    data: Path = request.getfixturevalue(fixture)
    outcome = run_training(make_config(task, data, tenant="acme", name="my-adapter"))
    folder = outcome.output

    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "loraswap.json", "profile.json"]
    manifest = read_manifest(folder)
    assert manifest.task == TaskKind(task)
    assert manifest.labels == labels
    # A tagger sees the words after the one it labels; the others keep the causal mask.
    assert manifest.attention is (AttentionMode.BIDIRECTIONAL if task == "token-cls"
                                  else AttentionMode.CAUSAL)
    assert (manifest.tenant, manifest.name) == ("acme", "my-adapter")
    assert manifest.base_model.weights_sha256 == weights_sha256(tiny_base_dir)
    assert (manifest.lora.r, manifest.lora.alpha) == (16, 32.0)
    assert metric_keys <= set(manifest.metrics)
    assert manifest.files == package_file_digests(folder)
    assert manifest.training["steps"] == 4

    adapter = read_lora_adapter(folder)
    assert adapter.config.task_type == TaskKind(task).peft_task_type
    assert adapter.rank == 16 and len(adapter.targets) == 7
    if labels is None:
        assert adapter.head is None
    else:
        assert adapter.head is not None
        assert tuple(adapter.head.weight.shape) == (len(labels), 64)
        # LlamaForTokenClassification's score has a bias, the sequence one has none.
        assert (adapter.head.bias is not None) == (task == "token-cls")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["modules_to_save"] == (None if labels is None else ["score"])

    profile_bytes = (folder / PROFILE_FILE).read_bytes()
    assert len(profile_bytes) < 1_000_000
    profile = json.loads(profile_bytes)
    assert profile["input_length_tokens"]["count"] > 0
    assert "0.5" in profile["input_length_tokens"]["quantiles"]
    embedding = profile["embedding"]
    assert embedding["dim"] == 64 and len(embedding["mean"]) == 64 and len(embedding["std"]) == 64
    assert len(embedding["pca"]["components"][0]) == 64
    if labels is None:
        assert profile["label_distribution"] is None
        # Informative only: the validation answers' mean token probability.
        assert profile["confidence"]["count"] == 2
        generation = profile["generation"]
        # 24 SFT rows, 2 held out for validation: every training prompt, decoded twice.
        assert generation["prompts"] == 22 and generation["max_new_tokens"] == 64
        for decoding in ("greedy", "sampled"):
            lengths = generation["decodings"][decoding]["output_length_tokens"]
            assert lengths["count"] == 22 and 1 <= lengths["min"] <= lengths["max"] <= 64
            logprob = generation["decodings"][decoding]["token_logprob"]
            assert logprob["count"] == 22 and logprob["max"] <= 0
    else:
        assert set(profile["label_distribution"]["counts"]) == set(labels)
        # The adapter's own predictions on held-out inputs only (a quarter of the small
        # data is held out so the reference has as many as it can), never training ones.
        predicted = profile["predicted_label_distribution"]
        assert set(predicted["shares"]) == set(labels)
        assert predicted["sample"]["held_out"] == manifest.training["examples"][
            "validation"] and predicted["sample"]["train"] == 0
        confidence = profile["confidence"]
        assert confidence["count"] == sum(predicted["sample"].values())
        assert sum(confidence["histogram"]["counts"]) == confidence["count"]
        words = sum(predicted["counts"].values())
        assert words == (6 * confidence["count"] if task == "token-cls"
                         else confidence["count"])


def test_seq_cls_learns_a_separable_task(make_config: ConfigFactory, csv_data: Path,
                                        tmp_path: Path) -> None:
    """Judged on rows it never trained on (the same phrases with numbers it never saw)."""
    held_out = tmp_path / "held_out.csv"
    with held_out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(100, 110):
            writer.writerow([f"{POSITIVE[i % 3]} {i}", "pos"])
            writer.writerow([f"{NEGATIVE[i % 3]} {i}", "neg"])
    assert not set(held_out.read_text().splitlines()[1:]) & set(
        csv_data.read_text().splitlines()[1:])
    cfg = make_config("seq-cls", csv_data, max_steps=None, epochs=6, eval_data=held_out,
                      baseline=True)
    manifest = run_training(cfg).manifest
    assert manifest.metrics["accuracy"] == 1.0
    assert manifest.metrics["eval_loss"] < manifest.metrics["baseline_eval_loss"]


def test_causal_lm_lowers_the_held_out_loss(make_config: ConfigFactory, sft_data: Path,
                                            tmp_path: Path) -> None:
    """Held out: instructions worded differently from every training record (the
    fixture's records repeat, so a split of them would share rows with training)."""
    held_out = tmp_path / "held_out.jsonl"
    rows = [{"instruction": "list the three primary colors", "input": "",
             "output": "red, yellow and blue"},
            {"instruction": "which city is the capital of france?", "input": "",
             "output": "paris is the capital of france."}]
    held_out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert not {r["instruction"] for r in rows} & {
        json.loads(line)["instruction"] for line in sft_data.read_text().splitlines()}
    cfg = make_config("causal-lm", sft_data, max_steps=12, baseline=True, learning_rate=1e-2,
                      eval_data=held_out)
    metrics = run_training(cfg).manifest.metrics
    assert metrics["eval_loss"] < metrics["baseline_eval_loss"]


def test_output_folder_with_other_files_is_refused(make_config: ConfigFactory,
                                                   csv_data: Path, tmp_path: Path) -> None:
    from loraswap.core.errors import ConfigurationError

    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match=r"notes\.txt"):
        run_training(make_config("seq-cls", csv_data, output=out))
