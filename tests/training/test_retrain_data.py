"""What a retraining run learns from, per task: original files through ``datasets``,
feedback rows turned into training rows, the stable held-out split, and the gate."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from loraswap.adapters.package import TaskKind
from loraswap.training.data import load_examples
from loraswap.training.retrain import two_set_gate
from loraswap.training.retrain_data import (
    TASK_DATA,
    CausalLmData,
    DataReading,
    TokenClsData,
    carve_validation,
    deduplicate,
    held_out,
    prompt_messages,
)

NER_LABELS = ["O", "B-Disease", "I-Disease"]


def row(pid: str, task: str, text_input: str, **truth: Any) -> dict[str, Any]:
    """A feedback row as service/drift/feedback.py writes it."""
    values: dict[str, Any] = {"label": None, "text": None, "labels": None}
    values.update(truth)
    return {"prediction_id": pid, "index": 0, "version": "1", "task": task,
            "input": text_input, "predicted_label": None, "received_at": 0.0, **values}


def test_a_text_prompt_is_one_user_turn_and_a_captured_chat_keeps_its_turns() -> None:
    assert prompt_messages("what is the capital of france?") == [
        {"role": "user", "content": "what is the capital of france?"}]
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert prompt_messages(json.dumps(chat)) == chat
    # JSON that is not a conversation is a text prompt like any other.
    assert prompt_messages('[1, 2]') == [{"role": "user", "content": "[1, 2]"}]
    assert prompt_messages('[{"role": "robot", "content": "x"}]')[0]["role"] == "user"


def test_generation_feedback_becomes_prompt_then_the_corrected_answer() -> None:
    chat = json.dumps([{"role": "user", "content": "name a color"}])
    rows = [row("pred-a", "causal-lm", "the capital of france?", text="paris"),
            row("pred-b", "causal-lm", chat, text="red"),
            row("pred-c", "causal-lm", "empty answer", text="   "),
            row("pred-d", "seq-cls", "a label row", label="pos")]
    split = CausalLmData().split_feedback(rows, [], holdout=0.0, seed=1)
    assert split.train == [
        {"messages": [{"role": "user", "content": "the capital of france?"},
                      {"role": "assistant", "content": "paris"}]},
        {"messages": [{"role": "user", "content": "name a color"},
                      {"role": "assistant", "content": "red"}]}]
    assert split.dropped == 1  # the blank answer; the label row is not generation feedback


def test_token_feedback_tags_the_words_the_service_splits() -> None:
    rows = [row("pred-a", "token-cls", "zzqxv-disease of the dog.",
                labels=["B-Disease", "I-Disease", "I-Disease", "O", "O", "O", "O"]),
            row("pred-b", "token-cls", "the dog", labels=["O"]),            # too few
            row("pred-c", "token-cls", "the dog", labels=["O", "B-Cat"])]   # unknown tag
    split = TokenClsData().split_feedback(rows, NER_LABELS, holdout=0.0, seed=1)
    assert split.train == [{"tokens": ["zzqxv", "-", "disease", "of", "the", "dog", "."],
                            "tags": ["B-Disease", "I-Disease", "I-Disease", "O", "O", "O",
                                     "O"]}]
    assert split.dropped == 2


def test_the_latest_feedback_per_input_counts_and_its_side_never_changes() -> None:
    rows = [row(f"pred-{i}", "seq-cls", f"text {i}", label="pos") for i in range(200)]
    rows.append(row("pred-0", "seq-cls", "text 0", label="neg"))  # a later correction
    first = TASK_DATA[TaskKind.SEQ_CLS].split_feedback(rows, ["neg", "pos"], 0.3, seed=42)
    assert len(first.train) + len(first.heldout) == 200
    assert 40 <= len(first.heldout) <= 80  # about 30 %
    assert {"text": "text 0", "label": "neg"} in first.train + first.heldout
    # More feedback later: every earlier input stays on its side.
    more = rows + [row(f"pred-x{i}", "seq-cls", f"new {i}", label="neg") for i in range(100)]
    second = TASK_DATA[TaskKind.SEQ_CLS].split_feedback(more, ["neg", "pos"], 0.3, seed=42)
    assert [r for r in second.heldout if r["text"].startswith("text")] == first.heldout
    assert held_out("pred-1-0", 0.3, 42) == held_out("pred-1-0", 0.3, 42)


def test_conll_and_jsonl_originals_read_into_one_token_table(tmp_path: Path) -> None:
    conll = tmp_path / "ner.conll"
    conll.write_text("the\tO\nzzqxv\tB-Disease\n\nof\tO\n\n")
    table = TokenClsData().original(conll, DataReading(), tmp_path / "cache")
    assert table["tokens"] == [["the", "zzqxv"], ["of"]]
    assert table["tags"] == [["O", "B-Disease"], ["O"]]
    jsonl = tmp_path / "ner.jsonl"
    jsonl.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O", "O"], "id": 3}) + "\n"
                     + json.dumps({"tokens": [], "tags": [], "id": 4}) + "\n")
    # Packages pushed before columns were kept per task recorded text/label for NER.
    legacy = DataReading("auto", "text", "label")
    table = TokenClsData().original(jsonl, legacy, tmp_path / "cache")
    assert table.column_names == ["tokens", "tags"] and table["tokens"] == [["a", "b"]]


def test_instruction_and_chat_originals_become_conversations(tmp_path: Path) -> None:
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"instruction": "name three colors", "input": "briefly",
                                "output": "red, yellow, blue"}) + "\n"
                    + json.dumps({"instruction": "hi", "input": "", "output": "hello"}) + "\n")
    table = CausalLmData().original(path, DataReading(), tmp_path / "cache")
    assert table[0]["messages"] == [
        {"role": "user", "content": "name three colors\n\nbriefly"},
        {"role": "assistant", "content": "red, yellow, blue"}]
    # Written out, the table reads back through the training code as chats.
    out = tmp_path / "out.jsonl"
    table.to_json(str(out), lines=True)
    examples = load_examples(out, TaskKind.CAUSAL_LM, "jsonl")
    assert [e.messages[-1]["content"] for e in examples] == [  # type: ignore[union-attr]
        "red, yellow, blue", "hello"]


def versions(new: float, old: float | None, n_new: int = 200, n_old: int = 400,
             metric: str = "accuracy") -> dict[str, float]:
    out = {f"new_traffic/{metric}": new, "new_traffic/examples": float(n_new)}
    if old is not None:
        out |= {f"original/{metric}": old, "original/examples": float(n_old)}
    return out


@pytest.mark.parametrize(("candidate", "active", "promote", "why"), [
    # Better on the new traffic by the margin, the original within its noise: promoted.
    (versions(0.80, 0.86), versions(0.70, 0.87), True, ">= margin"),
    # A tie on the new traffic keeps the active version (the old gate promoted ties).
    (versions(0.70, 0.87), versions(0.70, 0.87), False, "< margin"),
    # Under the margin: kept.
    (versions(0.705, 0.87), versions(0.70, 0.87), False, "< margin"),
    # Far better on the new traffic but worse on the original beyond 400 examples' noise
    # (1.645 × sqrt(2 × 0.87 × 0.13 / 400) ≈ 0.039): kept.
    (versions(0.90, 0.80), versions(0.70, 0.87), False, "> noise"),
    # No test split: judged on the new traffic alone.
    (versions(0.80, None), versions(0.70, None), True, ">= margin"),
    # No held-out feedback: nothing shows a gain, kept.
    ({"original/accuracy": 0.9, "original/examples": 10.0},
     {"original/accuracy": 0.5, "original/examples": 10.0}, False, "no held-out feedback"),
    (versions(math.nan, 0.87), versions(0.70, 0.87), False, "< margin"),
])
def test_the_gate_needs_a_gain_on_new_traffic_and_no_regression_beyond_noise(
        candidate: dict[str, float], active: dict[str, float], promote: bool,
        why: str) -> None:
    decided, reason = two_set_gate("accuracy", True, candidate, active, 0.01)
    assert decided is promote, reason
    assert why in reason


def test_a_lower_loss_is_the_gain_for_causal_lm() -> None:
    candidate = versions(1.20, 1.52, metric="eval_loss")
    active = versions(1.30, 1.50, metric="eval_loss")
    decided, reason = two_set_gate("eval_loss", False, candidate, active, 0.01)
    assert decided, reason  # 0.1 nats better; 0.02 worse on the original, within 5 %
    decided, reason = two_set_gate("eval_loss", False, active, candidate, 0.01)
    assert not decided and "< margin" in reason


def test_repeated_feedback_inputs_count_once_and_the_latest_label_wins() -> None:
    rows = [{"text": "Where is my card?", "label": "card_arrival"},
            {"text": "top up failed", "label": "top_up_failed"},
            {"text": "  where is  my CARD? ", "label": "lost_card"}]
    kept = deduplicate(rows, TaskKind.SEQ_CLS)
    assert kept == [rows[1], rows[2]]


def test_validation_is_carved_from_distinct_inputs_before_feedback_is_repeated() -> None:
    """No validation input of the candidate (its checkpoint choice and drift reference)
    is, normalised, also one of its training inputs, although feedback repeats and an
    original row may say the same text in other case and spacing."""
    data = TASK_DATA[TaskKind.SEQ_CLS]
    replay = [{"text": f"Original  Row {i}", "label": "pos"} for i in range(20)]
    fresh = [{"text": f"original row {i}", "label": "neg"} for i in range(0, 20, 2)] + [
        {"text": f"new input {i}", "label": "pos"} for i in range(10)]
    tables = carve_validation(data, replay, fresh, 2, lambda rows: 0.25, seed=7)
    trained = {data.input_key(r) for r in tables.train}
    validation = [data.input_key(r) for r in tables.validation]
    assert len(validation) == len(set(validation)) == 8  # a quarter of 30 distinct inputs
    assert not trained & set(validation)
    assert len(trained) + len(validation) == 30
    # The feedback still weighs twice in training.
    kept_fresh = [r for r in fresh if data.input_key(r) not in validation]
    assert sum(r in tables.train for r in kept_fresh) == len(kept_fresh)
    assert len(tables.train) == len([r for r in replay if data.input_key(r) not in
                                     validation]) + 2 * len(kept_fresh)
