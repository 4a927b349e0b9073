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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.drift.scores import FloatArray, median_bandwidth

# Signal names (the ``signal`` label of loraswap_drift_score).
INPUT_LENGTH = "input_length"
CONFIDENCE = "confidence"
PREDICTED_LABEL = "predicted_label"
EMBEDDING = "embedding"


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
class ReferenceProfile:
    """Every reference signal of one adapter version (None: absent, see ``missing``)."""

    input_length: BinnedReference | None = None
    confidence: BinnedReference | None = None
    labels: dict[str, float] | None = None
    embedding: EmbeddingReference | None = None
    missing: dict[str, str] = field(default_factory=dict)
    # No profile at all yet (a version registered without profile.json whose reference
    # upload has not been profiled): the drift monitor re-reads it until one appears.
    provisional: bool = False


# Each PSI bin holds at least this share of the reference (so at most 10 bins). PSI of two
# samples of one distribution is biased upwards by about (bins - 1) / window: with the
# profile's 20 raw bins a 200-input window scores ~0.1 without any drift, with 10 bins ~0.05.
MIN_BIN_SHARE = 0.1
# A histogram of fewer reference values is noise, not a reference: with 16 validation
# confidences, PSI against an in-distribution window of 100 averages ~0.5 (no drift).
MIN_REFERENCE_COUNT = 100


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


def parse_profile(profile: dict[str, Any] | None) -> ReferenceProfile:
    """The reference signals of a ``profile.json`` document (None: no profile at all)."""
    if profile is None:
        reason = "the package has no profile.json"
        return ReferenceProfile(missing={s: reason for s in
                                         (INPUT_LENGTH, CONFIDENCE, PREDICTED_LABEL, EMBEDDING)})
    missing: dict[str, str] = {}
    length = _binned(profile.get("input_length_tokens"))
    if length is None:
        missing[INPUT_LENGTH] = ("profile.json has no input length histogram of at least "
                                 f"{MIN_REFERENCE_COUNT} inputs")
    confidence = _binned(profile.get("confidence"))
    if confidence is None:
        missing[CONFIDENCE] = ("profile.json has no confidence histogram of at least "
                               f"{MIN_REFERENCE_COUNT} validation inputs")
    labels_section = profile.get("label_distribution") or {}
    labels = labels_section.get("shares") if isinstance(labels_section, dict) else None
    if not labels:
        missing[PREDICTED_LABEL] = "profile.json has no label distribution"
        labels = None
    embedding = _embedding(profile.get("embedding_served"))
    if embedding is None:
        missing[EMBEDDING] = ("profile.json has no served-space embedding profile "
                              "(embedding_served; retrain or re-profile the adapter)")
    return ReferenceProfile(length, confidence,
                            {str(k): float(v) for k, v in labels.items()} if labels else None,
                            embedding, missing)
