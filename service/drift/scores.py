"""Drift scores of a live window against a training-data reference (numpy only, no torch).

* :func:`psi`: Population Stability Index over fixed bins, Σ (cur−ref)·ln(cur/ref), with
  both shares smoothed by ``epsilon`` so an empty bin gives a large but finite term.
  Bands: < 0.1 stable, 0.1–0.25 warn, > 0.25 alert.
* :func:`js_distance`: Jensen–Shannon distance (base 2, in [0, 1]) of two categorical
  distributions: symmetric and bounded, a second view of the label mix.
* :func:`mmd_rbf`: squared Maximum Mean Discrepancy with an RBF kernel between the live
  window's embeddings and the stored reference sample, both projected on the profile's PCA
  basis. Unbiased estimator, so an in-distribution window scores about 0 whatever its
  size; bandwidth by the median heuristic on the reference sample alone (fixed per
  version, so scores of successive windows are comparable). Measured against a
  domain-classifier AUC in ``docs/drift.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

PSI_EPSILON = 1e-4
WARN_BAND = 0.1
ALERT_BAND = 0.25

FloatArray = NDArray[np.float64]


def shares(counts: Sequence[float] | FloatArray, epsilon: float = PSI_EPSILON) -> FloatArray:
    """Counts as shares, each at least ``epsilon`` (then renormalised)."""
    array = np.asarray(counts, dtype=np.float64)
    total = array.sum()
    base = array / total if total > 0 else np.full_like(array, 1.0 / max(len(array), 1))
    smoothed = np.maximum(base, epsilon)
    result: FloatArray = smoothed / smoothed.sum()
    return result


def bin_counts(values: Sequence[float], edges: Sequence[float]) -> FloatArray:
    """Counts of ``values`` in the bins of ``edges``; values outside go to the end bins."""
    inner = np.asarray(edges, dtype=np.float64)[1:-1]
    index = np.searchsorted(inner, np.asarray(values, dtype=np.float64), side="right")
    counts: FloatArray = np.bincount(index, minlength=len(edges) - 1).astype(np.float64)
    return counts


def psi(reference_counts: Sequence[float] | FloatArray,
        current_counts: Sequence[float] | FloatArray,
        epsilon: float = PSI_EPSILON) -> float:
    """Population Stability Index of ``current`` against ``reference`` (same bins)."""
    if len(reference_counts) != len(current_counts):
        raise ValueError("PSI needs the same bins on both sides")
    ref, cur = shares(reference_counts, epsilon), shares(current_counts, epsilon)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def js_distance(reference_counts: Sequence[float] | FloatArray,
                current_counts: Sequence[float] | FloatArray) -> float:
    """Jensen–Shannon distance (square root of the base-2 divergence), in [0, 1]."""
    p, q = shares(reference_counts, 0.0), shares(current_counts, 0.0)
    m = (p + q) / 2

    def kl(a: FloatArray, b: FloatArray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    divergence = max(0.0, (kl(p, m) + kl(q, m)) / 2)
    return float(np.sqrt(divergence))


def median_bandwidth(reference: FloatArray) -> float:
    """Median pairwise squared distance of the reference sample (the RBF ``2σ²``)."""
    distances = _squared_distances(reference, reference)
    upper = distances[np.triu_indices(len(reference), k=1)]
    median = float(np.median(upper)) if upper.size else 1.0
    return median if median > 0 else 1.0


def _squared_distances(a: FloatArray, b: FloatArray) -> FloatArray:
    sq: FloatArray = ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T)
    return np.maximum(sq, 0.0)


def mmd_rbf(reference: FloatArray, current: FloatArray, bandwidth: float) -> float:
    """Unbiased squared MMD with kernel ``exp(-‖x−y‖² / bandwidth)``, clipped at 0."""
    n, m = len(reference), len(current)
    if n < 2 or m < 2:
        raise ValueError("MMD needs at least two samples on each side")
    k_xx = np.exp(-_squared_distances(reference, reference) / bandwidth)
    k_yy = np.exp(-_squared_distances(current, current) / bandwidth)
    k_xy = np.exp(-_squared_distances(reference, current) / bandwidth)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return max(0.0, float(term_xx + term_yy - 2 * k_xy.mean()))
