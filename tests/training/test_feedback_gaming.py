"""A tenant cannot stack the gate with feedback (issue 23, finding 4). How candidates are
scored is the drift loop's; this is the data that reaches the gate."""

from __future__ import annotations

from loraswap.adapters.package import TaskKind
from loraswap.training.retrain_data import TASK_DATA, normalise
from tests.training.test_retrain_data import row

SEQ = TASK_DATA[TaskKind.SEQ_CLS]


def test_one_text_under_many_ids_is_one_row_on_one_side() -> None:
    spellings = ["Great movie", "great  movie", "GREAT MOVIE ", "great\tmovie"]
    rows = [row(f"pred-{i}", "seq-cls", spellings[i % 4], label="pos") for i in range(40)]
    split = SEQ.split_feedback(rows, ["neg", "pos"], 0.5, seed=42)
    # Old code: 40 rows split by prediction id, about half on each side.
    assert len(split.train) + len(split.heldout) == 1
    assert split.duplicates == 39


def test_feedback_on_the_original_test_split_is_used_on_neither_side() -> None:
    rows = [row("pred-a", "seq-cls", "The test sentence.", label="neg"),
            row("pred-b", "seq-cls", "a new sentence", label="pos")]
    test_inputs = frozenset({SEQ.input_key({"text": "the test  sentence.", "label": "pos"})})
    split = SEQ.split_feedback(rows, ["neg", "pos"], 0.0, seed=1, test_inputs=test_inputs)
    assert split.train == [{"text": "a new sentence", "label": "pos"}]
    assert split.in_test == 1
    assert normalise("Ｆｕｌｌ\u3000width") == "full width"
