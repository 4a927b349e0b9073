"""Evaluation metrics: scikit-learn and seqeval only (no Hub-downloaded metrics)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from loraswap.adapters.package import TaskKind

# The validation metric that early stopping and "best checkpoint" follow, per task.
SELECTION_METRIC: dict[TaskKind, tuple[str, bool]] = {
    TaskKind.SEQ_CLS: ("accuracy", True),
    TaskKind.TOKEN_CLS: ("f1", True),
    TaskKind.CAUSAL_LM: ("eval_loss", False),
}


def classification_metrics(true: Sequence[int], pred: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes present in ``true`` or ``pred``."""
    from sklearn.metrics import accuracy_score, f1_score

    if not true:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    return {
        "accuracy": float(accuracy_score(true, pred)),
        "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0)),
    }


def entity_metrics(true: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """seqeval entity-level precision, recall and F1 (word level, BIO tags)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    if not any(true):
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    return {
        "precision": float(precision_score(true, pred, zero_division=0)),
        "recall": float(recall_score(true, pred, zero_division=0)),
        "f1": float(f1_score(true, pred, zero_division=0)),
    }


def lm_metrics(total_loss: float, tokens: int) -> dict[str, float]:
    """Mean token loss and perplexity (capped so JSON never holds infinity)."""
    loss = total_loss / max(tokens, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def is_better(task: TaskKind, candidate: dict[str, float], best: float | None) -> bool:
    """Whether ``candidate`` improves on the best selection-metric value so far."""
    name, higher = SELECTION_METRIC[task]
    value = candidate[name]
    if best is None:
        return True
    return value > best if higher else value < best
