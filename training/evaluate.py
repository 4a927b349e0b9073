"""Forward passes over encoded data: loss, predictions, metrics and confidences."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias

from loraswap.adapters.package import TaskKind
from loraswap.training.metrics import classification_metrics, entity_metrics, lm_metrics
from loraswap.training.tasks import IGNORE, Encoded, TaskModel, collate, model_inputs, set_inference


@dataclass
class EvalResult:
    """Metrics plus per-example confidence (max softmax prob / mean token prob)."""

    metrics: dict[str, float]
    confidences: list[float] = field(default_factory=list)


def ordered_batches(items: Sequence[Encoded], batch_size: int) -> Iterator[list[Encoded]]:
    """Batches of similar length (less padding), in a fixed order."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    for start in range(0, len(order), batch_size):
        yield [items[i] for i in order[start:start + batch_size]]


def task_loss(task: TaskKind, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy: per example (seq-cls), per labelled token (others; LM shifted)."""
    logits = logits.float()
    if task is TaskKind.CAUSAL_LM:
        logits, labels = logits[:, :-1], labels[:, 1:]
    if task is TaskKind.SEQ_CLS:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE)


def forward_logits(task_model: TaskModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the adapted model for a collated batch."""
    out = task_model.model(**model_inputs(task_model, batch))
    return out.logits  # type: ignore[no-any-return]


@torch.no_grad()
def evaluate(task_model: TaskModel, task: TaskKind, data: Sequence[Encoded],
             labels: list[str] | None, batch_size: int, pad_id: int) -> EvalResult:
    """Evaluate on ``data``; restores training mode (dropout) afterwards."""
    set_inference(task_model.model, True)
    try:
        if task is TaskKind.SEQ_CLS:
            return _eval_seq(task_model, data, batch_size, pad_id)
        if task is TaskKind.TOKEN_CLS:
            assert labels is not None
            return _eval_tokens(task_model, data, labels, batch_size, pad_id)
        return _eval_lm(task_model, data, batch_size, pad_id)
    finally:
        set_inference(task_model.model, False)


def _eval_seq(task_model: TaskModel, data: Sequence[Encoded], batch_size: int,
              pad_id: int) -> EvalResult:
    true: list[int] = []
    pred: list[int] = []
    conf: list[float] = []
    loss_sum = 0.0
    for chunk in ordered_batches(data, batch_size):
        batch = collate(chunk, pad_id)
        logits = forward_logits(task_model, batch).float()
        loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
        probs = logits.softmax(-1)
        top, arg = probs.max(-1)
        true.extend(batch["labels"].tolist())
        pred.extend(arg.tolist())
        conf.extend(top.tolist())
    metrics = classification_metrics(true, pred)
    metrics["eval_loss"] = loss_sum / max(len(data), 1)
    return EvalResult(metrics, conf)


def _eval_tokens(task_model: TaskModel, data: Sequence[Encoded], labels: list[str],
                 batch_size: int, pad_id: int) -> EvalResult:
    true: list[list[str]] = []
    pred: list[list[str]] = []
    conf: list[float] = []
    loss_sum, count = 0.0, 0
    for chunk in ordered_batches(data, batch_size):
        batch = collate(chunk, pad_id)
        logits = forward_logits(task_model, batch).float()
        mask = batch["labels"] != IGNORE
        loss_sum += float(F.cross_entropy(logits[mask], batch["labels"][mask], reduction="sum"))
        count += int(mask.sum())
        probs = logits.softmax(-1)
        for row, example in enumerate(chunk):
            starts = torch.tensor(example.word_starts, dtype=torch.long)
            top, arg = probs[row, starts].max(-1)
            true.append(list(example.word_tags))
            pred.append([labels[i] for i in arg.tolist()])
            conf.append(float(top.mean()) if len(starts) else 1.0)
    metrics = entity_metrics(true, pred)
    metrics["eval_loss"] = loss_sum / max(count, 1)
    return EvalResult(metrics, conf)


def _eval_lm(task_model: TaskModel, data: Sequence[Encoded], batch_size: int,
             pad_id: int) -> EvalResult:
    conf: list[float] = []
    loss_sum, count = 0.0, 0
    for chunk in ordered_batches(data, batch_size):
        batch = collate(chunk, pad_id)
        logits = forward_logits(task_model, batch)[:, :-1].float()
        target = batch["labels"][:, 1:]
        mask = target != IGNORE
        logp = logits.log_softmax(-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        logp = logp * mask
        loss_sum -= float(logp.sum())
        count += int(mask.sum())
        per_example = (logp.exp() * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        conf.extend(per_example.tolist())
    return EvalResult(lm_metrics(loss_sum, count), conf)
