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
from loraswap.training.retrain import gate
from loraswap.training.retrain_data import (
    TASK_DATA,
    CausalLmData,
    DataReading,
    TokenClsData,
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


@pytest.mark.parametrize(("higher", "candidate", "active", "promote", "sign"), [
    (True, 0.8, 0.7, True, ">="), (True, 0.7, 0.7, True, ">="), (True, 0.6, 0.7, False, "<"),
    (False, 1.2, 1.3, True, "<="), (False, 1.3, 1.3, True, "<="),
    (False, 1.4, 1.3, False, ">"), (False, math.nan, 1.3, False, "not a number"),
])
def test_the_gate_follows_the_metric_direction(higher: bool, candidate: float, active: float,
                                               promote: bool, sign: str) -> None:
    decided, reason = gate("m", higher, candidate, active)
    assert decided is promote
    assert sign in reason
