"""``profile.json``: what the training data looked like, for drift monitoring.

Holds the input-length distribution (tokens; causal-lm: of the prompts), the training
label distribution, and an embedding profile of the inputs taken from the *base* model
(adapter disabled): mean and per-dimension std of the mean-pooled last hidden state, a PCA
basis and a small reference sample projected on it. ``embedding_served`` is the same
profile with the adapter applied and the adapter's own attention mask: the hidden state the
service's forward pass computes for each request, which the live embedding drift score
compares against (see ``docs/drift.md``); a classifier's is taken from its held-out inputs
when it has enough of them. Kept well under 1 MB.

Classifiers also get the trained adapter's own behaviour on a *reference sample* (held-out
inputs only, at most :data:`REFERENCE_SAMPLE`): the
distribution of its predicted labels (word tags for token-cls) and of its confidence,
which is what the service's live predictions are compared with. Causal-lm adapters get
reference generations instead (:mod:`loraswap.training.profile_generation`).
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

import torch

from loraswap.adapters.package import TaskKind
from loraswap.training.evaluate import forward_logits, ordered_batches
from loraswap.training.profile_generation import (
    REFERENCE_NEW_TOKENS,
    REFERENCE_PROMPTS,
    generation_profile,
)
from loraswap.training.tasks import IGNORE, Encoded, TaskModel, collate, model_inputs, set_inference

# 2: predicted_label_distribution and generation sections; confidence from the reference
# sample (was: the validation split).
PROFILE_VERSION = 2
# Classifiers: held-out inputs the trained adapter predicts for the reference, at most.
REFERENCE_SAMPLE = 512
# Held-out inputs a classifier needs before its served-embedding reference is taken from
# them rather than from its training inputs: the 64 vectors the MMD score compares with.
SERVED_EMBEDDING_MIN_HELD_OUT = 64
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


def prompts_only(data: Sequence[Encoded]) -> list[Encoded]:
    """For SFT examples: the prompt part of each (what live traffic sends). An example
    without a labelled (assistant) token is a prompt already and stays whole."""
    out = []
    for e in data:
        labels = list(e.labels)  # type: ignore[arg-type]
        cut = next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))
        out.append(replace(e, input_ids=e.input_ids[:max(cut, 1)], labels=labels[:max(cut, 1)]))
    return out


def reference_sample(held_out: Sequence[Encoded], seed: int, size: int = REFERENCE_SAMPLE,
                     ) -> tuple[list[Encoded], dict[str, int]]:
    """At most ``size`` held-out inputs, and how many (``{"held_out": n, "train": 0}``).
    Only inputs the adapter never trained on: on its training inputs an adapter is more
    confident than on new ones, so honest held-out traffic would look like drift (a
    24-label adapter scored confidence PSI 0.25 in distribution that way)."""
    rng = random.Random(seed)
    picked = rng.sample(list(held_out), min(size, len(held_out)))
    return picked, {"held_out": len(picked), "train": 0}


@torch.no_grad()
def predictions(task_model: TaskModel, task: TaskKind, data: Sequence[Encoded],
                labels: list[str], batch_size: int, pad_id: int,
                ) -> tuple[Counter[str], list[float]]:
    """Predicted label counts (seq-cls: one per input; token-cls: the tag of each word's
    first token) and each input's confidence (the top probability; token-cls: its mean
    over the words), as the service computes them live."""
    counts: Counter[str] = Counter()
    confidences: list[float] = []
    set_inference(task_model.model, True)
    try:
        for chunk in ordered_batches(data, batch_size):
            probs = forward_logits(task_model, collate(chunk, pad_id)).float().softmax(-1)
            for row, example in enumerate(chunk):
                if task is TaskKind.SEQ_CLS:
                    top, arg = probs[row].max(-1)
                    counts[labels[int(arg)]] += 1
                    confidences.append(float(top))
                elif example.word_starts:
                    top, args = probs[row, torch.tensor(example.word_starts)].max(-1)
                    counts.update(labels[int(i)] for i in args)
                    confidences.append(float(top.mean()))
    finally:
        set_inference(task_model.model, False)
    return counts, confidences


def _classifier_sections(task: TaskKind, task_model: TaskModel, data: Sequence[Encoded],
                         held_out: Sequence[Encoded], labels: list[str], pad_id: int,
                         batch_size: int, seed: int) -> dict[str, Any]:
    """``predicted_label_distribution`` and ``confidence`` on the reference sample (none
    without held-out inputs: the label signal then falls back to the training labels and
    confidence is absent)."""
    sample, sources = reference_sample(held_out, seed)
    if not sample:
        return {}
    counts, confidences = predictions(task_model, task, sample, labels, batch_size, pad_id)
    total = sum(counts.values()) or 1
    unit = "word" if task is TaskKind.TOKEN_CLS else "input"
    return {
        "predicted_label_distribution": {
            "unit": unit, "sample": sources,
            "counts": {name: counts[name] for name in labels},
            "shares": {name: round(counts[name] / total, 6) for name in labels}},
        "confidence": {
            "measure": "max softmax probability" + (" (mean over words)"
                                                    if task is TaskKind.TOKEN_CLS else ""),
            "split": "reference sample", "sample": sources,
            **distribution(confidences, bins=20, low=0.0, high=1.0)},
    }


def _served_embedding_profile(task: TaskKind, task_model: TaskModel, data: Sequence[Encoded],
                              held_out: Sequence[Encoded], *, pad_id: int, batch_size: int,
                              seed: int) -> dict[str, Any]:
    """``embedding_served`` of a classifier from its held-out inputs when it has at least
    :data:`SERVED_EMBEDDING_MIN_HELD_OUT`, else from its training inputs (``split`` says
    which). The adapter has fitted its training inputs: their hidden states sit tighter
    around the classes than new inputs' do, so a reference taken from them makes honest
    held-out traffic score as drift (a 5-intent adapter trained for 10 epochs: embedding
    MMD in alarm in 43 % of in-distribution windows of 100, docs/drift.md)."""
    from_held_out = (task is not TaskKind.CAUSAL_LM
                     and len(held_out) >= SERVED_EMBEDDING_MIN_HELD_OUT)
    section = embedding_profile(task_model, held_out if from_held_out else data, pad_id,
                                batch_size, seed, served=True)
    section["split"] = "held-out" if from_held_out else "training"
    return section


def build_profile(task: TaskKind, task_model: TaskModel, data: Sequence[Encoded],
                  labels: list[str] | None, pad_id: int, batch_size: int, seed: int, *,
                  stop_ids: Collection[int], held_out: Sequence[Encoded] = (),
                  answer_confidences: Sequence[float] = (),
                  generation_prompts: int = REFERENCE_PROMPTS,
                  max_new_tokens: int = REFERENCE_NEW_TOKENS) -> dict[str, Any]:
    """The whole ``profile.json`` document of a trained adapter.

    ``data``: the training (or reference) examples as encoded for training (causal-lm:
    whole conversations, or prompts alone; their prompts are profiled). ``held_out``:
    validation examples, the first part of a classifier's reference sample. ``stop_ids``:
    the tokens that end a generation (:func:`loraswap.base_model.families.stop_token_ids`).
    ``answer_confidences`` (causal-lm): the mean probability of each expected answer's
    tokens, stored as ``confidence`` for information (the service has no live
    counterpart). ``generation_prompts`` and ``max_new_tokens`` bound the causal-lm
    reference generations (two per prompt).
    """
    if task is TaskKind.CAUSAL_LM:
        data = prompts_only(data)
    lengths = [float(len(e.input_ids)) for e in data]
    profile: dict[str, Any] = {
        "profile_version": PROFILE_VERSION,
        "task": str(task),
        "input_length_tokens": distribution(lengths, bins=20, low=0.0),
        "label_distribution": label_distribution(task, data, labels),
        "confidence": None,
        "embedding": embedding_profile(task_model, data, pad_id, batch_size, seed),
        "embedding_served": _served_embedding_profile(task, task_model, data, held_out,
                                                      pad_id=pad_id, batch_size=batch_size,
                                                      seed=seed),
    }
    if task is TaskKind.CAUSAL_LM:
        if answer_confidences:
            profile["confidence"] = {"measure": "mean probability of the reference tokens",
                                     **distribution(list(answer_confidences), bins=20,
                                                    low=0.0, high=1.0)}
        profile["generation"] = generation_profile(
            task_model, [e.input_ids for e in data], pad_id, stop_ids, seed, distribution,
            sample_size=generation_prompts, max_new_tokens=max_new_tokens)
    elif labels is not None:
        profile.update(_classifier_sections(task, task_model, data, held_out, labels, pad_id,
                                            batch_size, seed))
    return profile
