"""The reference side of drift: what an adapter version's training data looked like.

Built from the package's ``profile.json`` (``training/profile.py`` writes it). Each signal
is present only when the profile has what it needs; :attr:`ReferenceProfile.missing` says
why a signal is absent, and the admin view shows it. No gauge is exported for an absent
signal (absent, not zero).

The embedding signal compares the live mean-pooled hidden state of each request, taken
from the forward pass the request already ran, so *with the adapter applied*. Profiles
hold two embedding sections: ``embedding`` (base model, adapter disabled) and
``embedding_served`` (adapter applied, as served). Only ``embedding_served`` is a fair
reference for served hidden states: comparing them to the base-model profile would report
the adapter itself as drift. A profile without it (older packages) has no embedding signal.

Which signals apply depends on the task (:data:`TASK_SIGNALS`). Classifiers compare the
live predicted labels and confidences with the trained adapter's own predictions on a
reference sample (``predicted_label_distribution``, ``confidence``); older packages fall
back to the training labels. Generation adapters compare output lengths and mean token
log-probabilities with reference generations (``generation``), greedy and sampled ones
apart (see :class:`MixtureReference`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loraswap.adapters.package import TaskKind
from loraswap.service.drift.scores import FloatArray, median_bandwidth

# Signal names (the ``signal`` label of loraswap_drift_score).
INPUT_LENGTH = "input_length"
CONFIDENCE = "confidence"
PREDICTED_LABEL = "predicted_label"
EMBEDDING = "embedding"
OUTPUT_LENGTH = "output_length"
TOKEN_LOGPROB = "token_logprob"

ALL_SIGNALS = (INPUT_LENGTH, CONFIDENCE, PREDICTED_LABEL, EMBEDDING, OUTPUT_LENGTH,
               TOKEN_LOGPROB)
# The signals each task can have (a profile of another task, or none, says why not).
TASK_SIGNALS: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.SEQ_CLS: (INPUT_LENGTH, CONFIDENCE, PREDICTED_LABEL, EMBEDDING),
    TaskKind.TOKEN_CLS: (INPUT_LENGTH, CONFIDENCE, PREDICTED_LABEL, EMBEDDING),
    TaskKind.CAUSAL_LM: (INPUT_LENGTH, OUTPUT_LENGTH, TOKEN_LOGPROB, EMBEDDING),
}


@dataclass(frozen=True)
class BinnedReference:
    """Histogram of a numeric signal: bin edges and the training counts."""

    edges: list[float]
    counts: list[float]


@dataclass(frozen=True)
class EmbeddingReference:
    """Mean, PCA basis and projected reference sample of the served embedding."""

    mean: FloatArray
    basis: FloatArray  # [components, hidden]
    sample: FloatArray  # [reference, components]
    bandwidth: float

    def project(self, vectors: FloatArray) -> FloatArray:
        """Live mean-pooled hidden states on the reference's PCA basis."""
        projected: FloatArray = (vectors - self.mean) @ self.basis.T
        return projected


@dataclass(frozen=True)
class MixtureReference:
    """A numeric signal of generations, one histogram per decoding on shared bins.

    Greedy and sampled generations of one adapter differ by construction (greedy picks
    each step's most probable token: higher log-probabilities, other lengths), so a live
    window is compared with the mixture of the decodings' references in the window's own
    proportions: with no drift its histogram is exactly that mixture.
    """

    edges: list[float]
    counts: dict[str, list[float]]  # decoding -> counts on ``edges``

    def expected(self, decodings: Mapping[str, int]) -> list[float]:
        """Reference shares for a window holding ``decodings`` generations of each kind."""
        total = sum(decodings.get(d, 0) for d in self.counts) or 1
        mixed = np.zeros(len(self.edges) - 1)
        for decoding, counts in self.counts.items():
            weight = decodings.get(decoding, 0) / total
            if weight:
                array = np.asarray(counts, dtype=np.float64)
                mixed += weight * array / max(array.sum(), 1.0)
        return [float(v) for v in mixed]


@dataclass(frozen=True)
class GenerationReference:
    """Reference generations of a causal-lm adapter, each limited to ``cap`` new tokens."""

    cap: int
    output_length: MixtureReference
    token_logprob: MixtureReference

    @property
    def decodings(self) -> frozenset[str]:
        """The decodings the reference holds (``greedy``, ``sampled``)."""
        return frozenset(self.output_length.counts)


@dataclass(frozen=True)
class ReferenceProfile:
    """Every reference signal of one adapter version (None: absent, see ``missing``).

    ``label_source`` says what ``labels`` are: the trained adapter's predictions on a
    reference sample, or (older packages) the training labels.
    """

    input_length: BinnedReference | None = None
    confidence: BinnedReference | None = None
    labels: dict[str, float] | None = None
    embedding: EmbeddingReference | None = None
    missing: dict[str, str] = field(default_factory=dict)
    # No profile at all yet (a version registered without profile.json whose reference
    # upload has not been profiled): the drift monitor re-reads it until one appears.
    provisional: bool = False
    generation: GenerationReference | None = None
    label_source: str | None = None
    # Inputs behind ``labels`` (the reference sample; older profiles: the counts' total),
    # which the alarm level of the label signals needs (0: unknown, levels as for 100).
    label_inputs: int = 0


# Each PSI bin holds at least this share of the reference (so at most 10 bins). PSI of two
# samples of one distribution is biased upwards by about (bins - 1) / window: with the
# profile's 20 raw bins a 200-input window scores ~0.1 without any drift, with 10 bins ~0.05.
MIN_BIN_SHARE = 0.1
# A histogram of fewer reference values is noise, not a reference: with 16 validation
# confidences, PSI against an in-distribution window of 100 averages ~0.5 (no drift).
# From 30 values on, the alarm level accounts for the reference's own noise (a small
# reference widens it, service/drift/calibration.py) and /admin/drift says so.
MIN_REFERENCE_COUNT = 30
# Reference generations are expensive (64 prompts per decoding by default), so a decoding
# needs only this many, and their bins are coarser: at least 20 % of the reference each
# (at most 5 bins). PSI's no-drift bias is about (bins - 1) * (1/reference + 1/window):
# 4 * (1/64 + 1/500) = 0.07 with 5 bins, where 10 bins would give 0.16.
MIN_GENERATION_COUNT = 32
GENERATION_BIN_SHARE = 0.2


def coarsen(edges: list[float], counts: list[float],
            min_share: float = MIN_BIN_SHARE) -> BinnedReference:
    """Adjacent bins merged until each holds ``min_share`` of the reference (the last
    bin takes whatever remains, merged into its neighbour when too small)."""
    total = sum(counts) or 1.0
    new_edges, new_counts = [edges[0]], []
    running = 0.0
    for count, right in zip(counts, edges[1:], strict=True):
        running += count
        if running / total >= min_share:
            new_edges.append(right)
            new_counts.append(running)
            running = 0.0
    if running > 0 or not new_counts:
        if new_counts:
            new_counts[-1] += running
            new_edges[-1] = edges[-1]
        else:
            new_edges.append(edges[-1])
            new_counts.append(running)
    return BinnedReference(new_edges, new_counts)


def _binned(section: Any) -> BinnedReference | None:
    if not isinstance(section, dict) or int(section.get("count") or 0) < MIN_REFERENCE_COUNT:
        return None
    histogram = section.get("histogram") or {}
    edges, counts = histogram.get("edges"), histogram.get("counts")
    if not edges or not counts or len(edges) != len(counts) + 1:
        return None
    return coarsen([float(e) for e in edges], [float(c) for c in counts])


def _embedding(section: Any) -> EmbeddingReference | None:
    if not isinstance(section, dict):
        return None
    pca = section.get("pca") or {}
    sample = np.asarray(pca.get("reference_projections") or [], dtype=np.float64)
    basis = np.asarray(pca.get("components") or [], dtype=np.float64)
    mean = np.asarray(section.get("mean") or [], dtype=np.float64)
    if sample.ndim != 2 or basis.ndim != 2 or len(sample) < 8 or mean.shape[0] != basis.shape[1]:
        return None
    return EmbeddingReference(mean, basis, sample, median_bandwidth(sample))


def regroup(edges: list[float], counts: list[float], merged: list[float]) -> list[float]:
    """``counts`` on ``edges`` summed onto ``merged``, a subset of ``edges`` (coarsened)."""
    index = np.searchsorted(np.asarray(merged[1:-1]), np.asarray(edges[:-1]), side="right")
    out = np.zeros(len(merged) - 1)
    np.add.at(out, index, np.asarray(counts, dtype=np.float64))
    return [float(v) for v in out]


def _mixture(sections: dict[str, Any], key: str) -> MixtureReference | None:
    """The ``key`` histograms of every usable decoding, coarsened onto shared bins."""
    raw: dict[str, list[float]] = {}
    edges: list[float] | None = None
    for decoding, section in sections.items():
        part = section.get(key) if isinstance(section, dict) else None
        if not isinstance(part, dict) or int(part.get("count") or 0) < MIN_GENERATION_COUNT:
            continue
        histogram = part.get("histogram") or {}
        found = [float(e) for e in histogram.get("edges") or []]
        counts = [float(c) for c in histogram.get("counts") or []]
        if len(found) != len(counts) + 1 or len(counts) < 1 or (edges and found != edges):
            continue  # unusable, or not on the bins of the others
        edges = found
        raw[str(decoding)] = counts
    if edges is None or not raw:
        return None
    pooled = np.zeros(len(edges) - 1)
    for counts in raw.values():  # each decoding weighs the same in the bins' choice
        pooled += np.asarray(counts) / max(sum(counts), 1.0)
    merged = coarsen(edges, [float(v) for v in pooled], GENERATION_BIN_SHARE).edges
    return MixtureReference(merged, {d: regroup(edges, c, merged) for d, c in raw.items()})


def _generation(section: Any) -> GenerationReference | None:
    if not isinstance(section, dict) or not isinstance(section.get("decodings"), dict):
        return None
    cap = int(section.get("max_new_tokens") or 0)
    lengths = _mixture(section["decodings"], "output_length_tokens")
    logprobs = _mixture(section["decodings"], "token_logprob")
    if cap < 1 or lengths is None or logprobs is None or set(lengths.counts) != set(
            logprobs.counts):
        return None
    return GenerationReference(cap, lengths, logprobs)


def _labels(profile: dict[str, Any]) -> tuple[dict[str, float] | None, str | None, int]:
    """Predicted-label shares of the reference sample, else the training labels'; and how
    many inputs they come from (the sample's inputs; else the counts' total)."""
    for key, source in (("predicted_label_distribution", "predictions"),
                        ("label_distribution", "training labels")):
        section = profile.get(key)
        shares = section.get("shares") if isinstance(section, dict) else None
        if isinstance(section, dict) and isinstance(shares, dict) and shares:
            sample = section.get("sample")
            counts = section.get("counts")
            if isinstance(sample, dict):
                inputs = sum(int(v) for v in sample.values())
            elif isinstance(counts, dict):
                inputs = int(sum(float(v) for v in counts.values()))
            else:
                inputs = 0
            return {str(k): float(v) for k, v in shares.items()}, source, inputs
    return None, None, 0


def profile_task(profile: dict[str, Any] | None) -> TaskKind | None:
    """The task a ``profile.json`` names (None: none, or not a task loraswap knows)."""
    try:
        return TaskKind(str((profile or {}).get("task")))
    except ValueError:
        return None


def parse_profile(profile: dict[str, Any] | None,
                  task: TaskKind | None = None) -> ReferenceProfile:
    """The reference signals of a ``profile.json`` document (None: no profile at all).

    ``task`` (the adapter's, from its manifest) defaults to the profile's own ``task``;
    only that task's signals are read, and ``missing`` names only those.
    """
    task = task or profile_task(profile)
    signals = ALL_SIGNALS if task is None else TASK_SIGNALS[task]
    if profile is None:
        return ReferenceProfile(missing={s: "the package has no profile.json" for s in signals})
    missing: dict[str, str] = {}
    length = _binned(profile.get("input_length_tokens"))
    if length is None:
        missing[INPUT_LENGTH] = ("profile.json has no input length histogram of at least "
                                 f"{MIN_REFERENCE_COUNT} inputs")
    embedding = _embedding(profile.get("embedding_served"))
    if embedding is None:
        missing[EMBEDDING] = ("profile.json has no served-space embedding profile "
                              "(embedding_served; retrain or re-profile the adapter)")
    confidence = labels = source = generation = None
    label_inputs = 0
    if CONFIDENCE in signals:
        confidence = _binned(profile.get("confidence"))
        if confidence is None:
            missing[CONFIDENCE] = ("profile.json has no confidence histogram of at least "
                                   f"{MIN_REFERENCE_COUNT} reference inputs")
    if PREDICTED_LABEL in signals:
        labels, source, label_inputs = _labels(profile)
        if labels is None:
            missing[PREDICTED_LABEL] = "profile.json has no label distribution"
    if OUTPUT_LENGTH in signals:
        generation = _generation(profile.get("generation"))
        if generation is None:
            reason = ("profile.json has no reference generations (generation) of at least "
                      f"{MIN_GENERATION_COUNT} prompts; retrain or re-profile the adapter")
            missing[OUTPUT_LENGTH] = missing[TOKEN_LOGPROB] = reason
    return ReferenceProfile(length, confidence, labels, embedding, missing,
                            generation=generation, label_source=source,
                            label_inputs=label_inputs)
