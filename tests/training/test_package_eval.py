"""Retraining evaluates stored packages: the same predictions as PEFT's own loader."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForSequenceClassification

from loraswap.base_model.loading import Quantization
from loraswap.training.package_eval import evaluate_package
from tests.conftest import write_classifier_adapter

TEXTS = ["great movie", "awful plot", "a charming film", "boring", "loved it", "meh",
         "the quick brown fox", "paris is the capital of france"]


def test_evaluate_package_scores_what_peft_predicts(tiny_base_dir: Path,
                                                    tmp_path: Path) -> None:
    labels = ["negative", "positive"]
    folder = write_classifier_adapter(tiny_base_dir, tmp_path / "pkg", task="seq-cls",
                                      labels=labels, seed=7)
    model = LlamaForSequenceClassification.from_pretrained(
        tiny_base_dir, num_labels=2, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    with torch.inference_mode():
        predicted = [labels[int(model(input_ids=torch.tensor([tokenizer(t)["input_ids"]]))
                                .logits[0].argmax())] for t in TEXTS]
    # Both classes predicted, so a constant evaluator cannot match PEFT.
    assert set(predicted) == set(labels), predicted
    # Ground truth equal to PEFT's answer on six rows, the other label on two: 0.75, where
    # a label-swapped evaluator scores 0.25; the two rows are picked so that a constant
    # evaluator does not score 0.75 either.
    def flipped(rows: tuple[int, int]) -> list[str]:
        return [labels[1 - labels.index(p)] if i in rows else p for i, p in enumerate(predicted)]

    truth = next(t for t in map(flipped, itertools.combinations(range(len(TEXTS)), 2))
                 if all(sum(y == c for y in t) != 6 for c in labels))
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                            for t, y in zip(TEXTS, truth, strict=True)))
    metrics = evaluate_package(folder, data, tiny_base_dir, quantization=Quantization.FP32)
    assert metrics["examples"] == len(TEXTS)
    assert metrics["accuracy"] == 0.75
