"""``profile.json``: what the training data looked like, for drift monitoring.

Holds the input-length distribution (tokens), the training label distribution, the
validation confidence distribution, and an embedding profile of the inputs taken from the
*base* model (adapter disabled): mean and per-dimension std of the mean-pooled last hidden
state, a PCA basis and a small reference sample projected on it. ``embedding_served`` is
the same profile with the adapter applied and the adapter's own attention mask: the
hidden state the service's forward pass computes for each request, which the live
embedding drift score compares against (see ``docs/drift.md``). Kept well under 1 MB.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from adapters.package import TaskKind
from training.tasks import Encoded, TaskModel, collate, model_inputs, set_inference

PROFILE_VERSION = 1
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def _round(values: Sequence[float], digits: int = 5) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in values]


def distribution(values: Sequence[float], bins: int, low: float | None = None,
                 high: float | None = None) -> dict[str, Any]:
    """Histogram (counts, edges), quantiles, mean, min and max of ``values``."""
    if not values:
        return {"count": 0}
    data = torch.tensor(values, dtype=torch.float64)
    lo = float(data.min()) if low is None else low
    hi = float(data.max()) if high is None else high
    if hi <= lo:
        hi = lo + 1.0
    counts = torch.histc(data, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    quantiles = torch.quantile(data, torch.tensor(QUANTILES, dtype=torch.float64))
    return {
        "count": len(values),
        "mean": float(data.mean()),
        "min": float(data.min()),
        "max": float(data.max()),
        "quantiles": {str(q): v for q, v in zip(QUANTILES, _round(quantiles.tolist()),
                                                  strict=True)},
        "histogram": {"edges": _round(edges.tolist()), "counts": [int(c) for c in counts]},
    }


def label_distribution(task: TaskKind, train: Sequence[Encoded],
                       labels: list[str] | None) -> dict[str, Any] | None:
    """Counts and shares of each label in the training data (word tags for token-cls)."""
    if labels is None:
        return None
    counts: Counter[str] = Counter()
    for example in train:
        if task is TaskKind.TOKEN_CLS:
            counts.update(example.word_tags)
        elif isinstance(example.labels, int):
            counts[labels[example.labels]] += 1
    total = sum(counts.values()) or 1
    return {"counts": {name: counts[name] for name in labels},
            "shares": {name: round(counts[name] / total, 6) for name in labels}}


@torch.no_grad()
def embedding_profile(task_model: TaskModel, data: Sequence[Encoded], pad_id: int,
                      batch_size: int, seed: int, sample_size: int = 512,
                      components: int = 8, reference: int = 64,
                      served: bool = False) -> dict[str, Any]:
    """Mean-pooled last hidden states of a sample of inputs: of the base model (adapter
    disabled), or with ``served`` as the service computes them (adapter and its attention
    mask applied)."""
    rng = random.Random(seed)
    picked = rng.sample(list(data), min(sample_size, len(data)))
    vectors: list[torch.Tensor] = []
    set_inference(task_model.model, True)
    try:
        with contextlib.nullcontext() if served else task_model.model.disable_adapter():
            for start in range(0, len(picked), batch_size):
                batch = collate(picked[start:start + batch_size], pad_id)
                inputs = (model_inputs(task_model, batch) if served else
                          {"input_ids": batch["input_ids"],
                           "attention_mask": batch["attention_mask"]})
                hidden = task_model.backbone(**inputs)
                states = hidden.last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                vectors.append((states * mask).sum(1) / mask.sum(1).clamp(min=1))
    finally:
        set_inference(task_model.model, False)
    matrix = torch.cat(vectors)
    mean = matrix.mean(0)
    std = matrix.std(0, unbiased=False)
    centred = matrix - mean
    k = min(components, matrix.shape[0], matrix.shape[1])
    _, singular, basis = torch.linalg.svd(centred, full_matrices=False)
    basis = basis[:k]
    explained = (singular[:k] ** 2) / (singular**2).sum().clamp(min=1e-12)
    projected = centred[:reference] @ basis.T
    return {
        "source": ("adapter applied, as served" if served else
                   "base model (adapter disabled)") + ", mean-pooled last hidden state",
        "dim": int(matrix.shape[1]),
        "sample_size": int(matrix.shape[0]),
        "mean": _round(mean.tolist()),
        "std": _round(std.tolist()),
        "pca": {
            "components": [_round(row) for row in basis.tolist()],
            "explained_variance_ratio": _round(explained.tolist()),
            "reference_projections": [_round(row, 4) for row in projected.tolist()],
        },
    }


def build_profile(task: TaskKind, task_model: TaskModel, train: Sequence[Encoded],
                  labels: list[str] | None, confidences: Sequence[float], pad_id: int,
                  batch_size: int, seed: int) -> dict[str, Any]:
    """The whole ``profile.json`` document."""
    # For SFT the caller passes prompts only: what live traffic will send.
    lengths = [float(len(e.input_ids)) for e in train]
    return {
        "profile_version": PROFILE_VERSION,
        "task": str(task),
        "input_length_tokens": distribution(lengths, bins=20, low=0.0),
        "label_distribution": label_distribution(task, train, labels),
        "confidence": {
            "measure": ("mean probability of the reference tokens" if task is TaskKind.CAUSAL_LM
                        else "max softmax probability" + (" (mean over words)"
                                                          if task is TaskKind.TOKEN_CLS else "")),
            "split": "validation",
            **distribution(list(confidences), bins=20, low=0.0, high=1.0),
        },
        "embedding": embedding_profile(task_model, train, pad_id, batch_size, seed),
        "embedding_served": embedding_profile(task_model, train, pad_id, batch_size, seed,
                                              served=True),
    }
