"""The quality runner's commands and the zero-shot prompting baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraswap.bench.quality import command_line, runs
from loraswap.training.data import TextExample
from loraswap.training.zeroshot import _rows, label_scores, zero_shot_metrics


def test_every_run_is_a_loraswap_train_line_reading_the_shared_data(tmp_path: Path) -> None:
    data = Path("/data/shared")
    lines = [command_line(run) for run in runs(data, tmp_path)]
    assert len(lines) == 7
    assert all(line.startswith("loraswap train --task ") for line in lines)
    assert all(str(data) in line and f"--output {tmp_path}/" in line for line in lines)
    assert sum("--qlora" in line for line in lines) == 1
    assert sum("--attention causal" in line for line in lines) == 1


def test_zero_shot_prefers_the_likelier_label(tiny_base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir)).eval()
    prompt = tokenizer("the quick brown", add_special_tokens=False)["input_ids"]
    rows = [(prompt + tokenizer(w, add_special_tokens=False)["input_ids"], len(prompt))
            for w in (" fox", " dog")]
    single = [label_scores(model, tokenizer, [row], 0)[0] for row in rows]
    batched = label_scores(model, tokenizer, rows, 0)
    # Right padding in a batch must not change a row's score.
    assert abs(batched[0] - single[0]) < 1e-4 and abs(batched[1] - single[1]) < 1e-4

    # Expected predictions from a plain forward pass per label row (no batching, no
    # padding): the label whose answer tokens have the larger summed log-probability.
    verbalizers = {"a": "fox", "b": "paris"}
    texts = ["the quick brown fox", "paris", "the lazy dog", "capital of france"]
    expected = [_likelier_label(model, tokenizer, text, verbalizers) for text in texts]
    other = {"a": "b", "b": "a"}
    # Three examples carry the likelier label as gold, one the other: accuracy 3/4.
    golds = [expected[0], expected[1], expected[2], other[expected[3]]]
    examples = [TextExample(t, g) for t, g in zip(texts, golds, strict=True)]
    metrics = zero_shot_metrics(model, tokenizer, examples, verbalizers, INSTRUCTION,
                                examples_per_batch=3)
    assert metrics["examples"] == 4.0
    assert metrics["accuracy"] == 0.75


INSTRUCTION = "Which word?"


def _likelier_label(model: Any, tokenizer: Any, text: str, verbalizers: dict[str, str]) -> str:
    scores = {}
    for label, (ids, start) in zip(verbalizers, _rows(tokenizer, TextExample(text, ""),
                                                      INSTRUCTION, list(verbalizers.values())),
                                   strict=True):
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        scores[label] = float(sum(logp[i - 1, ids[i]] for i in range(start, len(ids))))
    return max(scores, key=scores.__getitem__)
