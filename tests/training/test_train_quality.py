"""The quality runner's commands and the zero-shot prompting baseline."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from loraswap.bench.quality import command_line, runs
from training.data import TextExample
from training.zeroshot import label_scores, zero_shot_metrics


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

    examples = [TextExample("the quick brown fox", "a"), TextExample("paris", "b")] * 3
    metrics = zero_shot_metrics(model, tokenizer, examples, {"a": "fox", "b": "paris"},
                                "Which word?", limit=4)
    assert metrics["examples"] == 4.0
    assert 0.0 <= metrics["accuracy"] <= 1.0
