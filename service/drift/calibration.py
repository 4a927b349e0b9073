"""Alarm levels of drift scores: what sampling noise alone can score, per signal and window.

A fixed band cannot serve every adapter. PSI of two samples of one distribution is about
``(k − 1)(1/n + 1/m)`` by itself (k bins or labels, a window of n inputs, a reference of
m): ≈ 0.14 for 24 labels, 240 inputs and 512 reference predictions, ≈ 0.004 for 2 labels
and 500 inputs. So each score gets its own **alarm level**: the ``ALARM_CONFIDENCE``
quantile of the score's null distribution, simulated for this reference and this window
size with both sides drawn afresh from the reference's own distribution (a parametric
bootstrap: the reference is itself a sample, so its noise is in the level too; a small
reference gets a wider level instead of no signal).

* Histograms and label mixes (PSI, JS): multinomial draws of the reference's bin or label
  shares, with half a count added to each (Jeffreys), so a label the reference never
  predicted still has a chance and its level accounts for it.
* Served embeddings (MMD): draws from a Gaussian kernel density of the reference sample
  (Silverman's bandwidth), so clusters (one per intent) stay clusters.

A version's window scores many signals, and the alert fires on any of them, so each
level is set at ``ALARM_CONFIDENCE`` = 99.99 %. Averaged over references that would be
far below 1 % of in-distribution windows in alarm, but an adapter keeps *one* reference,
and its false-alarm rate is conditional on that reference's own sampling luck: simulated
for a 77-label adapter (512 reference predictions), one reference in ten alarmed on over
0.4 % of windows per signal at 99.9 % (worst of 60: 1.4 %), and 0.05 % at 99.99 % (worst:
0.15 %), for levels only 3–10 % higher (a 90-value reference: up to 30 %). Measured with
``loraswap bench drift-calibration``: docs/drift.md, "False alarms and detection".

Levels fall as the window grows, so a window between two sizes of the grid (every
``WINDOW_STEP`` inputs) uses the smaller size's level (wider, never narrower). Computed
once per (signal, method, size) on the drift thread and cached with the version's window;
numpy only.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from loraswap.service.drift.scores import PSI_EPSILON, FloatArray

ALARM_CONFIDENCE = 0.9999
# Enough draws for a stable 99.99 % quantile (its two largest of 20,000); a few ms each.
NULL_DRAWS = 20_000
MMD_NULL_DRAWS = 400
WINDOW_STEP = 100
MIN_LEVEL = 1e-6
# Half a count per bin or label (Jeffreys' prior) in the simulated distribution.
PRIOR_COUNT = 0.5


def grid_size(n: int) -> int:
    """The window size whose level a window of ``n`` inputs uses (``n`` rounded down to the
    grid; small windows use their own size)."""
    return n if n < WINDOW_STEP else n - n % WINDOW_STEP


def _rng(*key: object) -> np.random.Generator:
    """A generator seeded from ``key``, so a level is the same on every replica."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _shares_rows(counts: FloatArray, epsilon: float) -> FloatArray:
    totals = counts.sum(1, keepdims=True)
    base = counts / np.maximum(totals, 1.0)
    smoothed = np.maximum(base, epsilon)
    result: FloatArray = smoothed / smoothed.sum(1, keepdims=True)
    return result


def psi_rows(reference: FloatArray, current: FloatArray,
             epsilon: float = PSI_EPSILON) -> FloatArray:
    """PSI of each row pair (as :func:`~loraswap.service.drift.scores.psi`, vectorised)."""
    ref, cur = _shares_rows(reference, epsilon), _shares_rows(current, epsilon)
    out: FloatArray = np.sum((cur - ref) * np.log(cur / ref), axis=1)
    return out


def js_rows(reference: FloatArray, current: FloatArray) -> FloatArray:
    """JS distance of each row pair (as :func:`~loraswap.service.drift.scores.js_distance`)."""
    p, q = _shares_rows(reference, 0.0), _shares_rows(current, 0.0)
    mid = (p + q) / 2

    def kl(a: FloatArray, b: FloatArray) -> FloatArray:
        ratio = np.where(a > 0, a / np.where(b > 0, b, 1.0), 1.0)
        result: FloatArray = np.sum(np.where(a > 0, a * np.log2(ratio), 0.0), axis=1)
        return result

    divergence = np.maximum(0.0, (kl(p, mid) + kl(q, mid)) / 2)
    out: FloatArray = np.sqrt(divergence)
    return out


def categorical_null(counts: Sequence[float], reference_size: int, window: int,
                     statistic: Callable[[FloatArray, FloatArray], FloatArray],
                     key: object, draws: int = NULL_DRAWS) -> FloatArray:
    """Scores of ``draws`` simulated pairs (reference of ``reference_size``, window of
    ``window``) from the reference's own shares, half a count added per category."""
    array = np.asarray(counts, dtype=np.float64)
    total = array.sum()
    shares = array / total if total > 0 else np.full(len(array), 1.0 / len(array))
    prior = shares * reference_size + PRIOR_COUNT
    probabilities = prior / prior.sum()
    rng = _rng(key, reference_size, window)
    ref = rng.multinomial(max(reference_size, 1), probabilities, size=draws).astype(np.float64)
    cur = rng.multinomial(max(window, 1), probabilities, size=draws).astype(np.float64)
    return statistic(ref, cur)


def _mmd_from_kernel(k_xx: FloatArray, k_yy: FloatArray, k_xy: FloatArray) -> float:
    n, m = len(k_xx), len(k_yy)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(term_xx + term_yy - 2 * k_xy.mean())


def mmd_null(sample: FloatArray, bandwidth: float, window: int, key: object,
             draws: int = MMD_NULL_DRAWS) -> FloatArray:
    """Unbiased MMD² of ``draws`` simulated pairs (a reference as large as ``sample`` and a
    window of ``window``) from a Gaussian kernel density of ``sample``."""
    m, dim = sample.shape
    spread = sample.std(0) * (4 / ((dim + 2) * m)) ** (1 / (dim + 4))  # Silverman
    rng = _rng(key, m, window)
    out = np.empty(draws)
    size = m + window
    for draw in range(draws):
        picked = sample[rng.integers(0, m, size)] + rng.standard_normal((size, dim)) * spread
        sq = (picked * picked).sum(1)
        kernel = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2 * picked @ picked.T, 0.0)
                        / bandwidth)
        out[draw] = _mmd_from_kernel(kernel[:m, :m], kernel[m:, m:], kernel[:m, m:])
    return np.maximum(out, 0.0)


def level_of(null: FloatArray) -> float:
    """The alarm level of a simulated null: its ``ALARM_CONFIDENCE`` quantile (at least
    ``MIN_LEVEL``, so the rule's score / level is always defined)."""
    return max(float(np.quantile(null, ALARM_CONFIDENCE)), MIN_LEVEL)


@dataclass
class AlarmLevels:
    """Levels of one version's signals, cached by (signal, method, grid size)."""

    cache: dict[tuple[str, str, int], float] = field(default_factory=dict)

    def level(self, signal: str, method: str, window: int,
              compute: Callable[[int], FloatArray]) -> float:
        """The level for a window of ``window`` inputs; ``compute(size)`` simulates the
        null at a grid size (called once per size)."""
        size = grid_size(window)
        key = (signal, method, size)
        if key not in self.cache:
            self.cache[key] = level_of(compute(size))
        return self.cache[key]
