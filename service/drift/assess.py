"""Every score a version's window supports, with its alarm level (drift thread only).

A score is in alarm when it is above its level: the score that sampling noise alone
reaches in only 0.1 % of windows of this size against this reference
(:mod:`loraswap.service.drift.calibration`). The level is exported beside the score
(``loraswap_drift_alarm_level``) so one alert rule, ``score > level``, fits every adapter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from loraswap.service.drift.calibration import (
    categorical_null,
    js_rows,
    mmd_null,
    psi_rows,
)
from loraswap.service.drift.reference import (
    CONFIDENCE,
    EMBEDDING,
    INPUT_LENGTH,
    OUTPUT_LENGTH,
    PREDICTED_LABEL,
    TOKEN_LOGPROB,
)
from loraswap.service.drift.scores import FloatArray, bin_counts, js_distance, mmd_rbf, psi
from loraswap.service.drift.windows import VersionWindow

# A reference that does not say how many inputs it holds is taken as this many.
UNKNOWN_REFERENCE_SIZE = 100


@dataclass(frozen=True)
class Measure:
    """One score of a window, and how to simulate its null for a window size."""

    signal: str
    method: str
    value: float
    window: int  # inputs the score is computed on
    reference: int  # reference values behind it
    null: Callable[[int], FloatArray]


@dataclass(frozen=True)
class Assessed:
    """A score, its alarm level and whether it is in alarm."""

    signal: str
    method: str
    score: float
    level: float
    window: int
    reference: int

    @property
    def alarm(self) -> bool:
        """Above what sampling noise explains at the alarm confidence."""
        return self.score > self.level

    def view(self) -> dict[str, object]:
        """The admin view of this score."""
        return {"score": round(self.score, 6), "alarm_level": round(self.level, 6),
                "alarm": self.alarm, "window": self.window, "reference": self.reference}


def _categorical(signal: str, method: str, value: float, expected: list[float],
                 reference: int, window: int, statistic: Callable[[FloatArray, FloatArray],
                                                                  FloatArray]) -> Measure:
    null = partial(categorical_null, expected, reference, statistic=statistic,
                   key=(signal, method, len(expected)))
    return Measure(signal, method, value, window, reference,
                   lambda size: null(window=size))


def measures(window: VersionWindow, min_samples: int) -> list[Measure]:
    """Every score the window and its reference support."""
    reference = window.reference
    out: list[Measure] = []
    # Input length is scored from the first input on, confidence from min_samples.
    for signal, binned, values, needed in (
            (INPUT_LENGTH, reference.input_length, window.lengths, 1),
            (CONFIDENCE, reference.confidence, window.confidences, min_samples)):
        if binned is not None and values and len(values) >= needed:
            out.append(_categorical(signal, "psi",
                                    psi(binned.counts, bin_counts(values, binned.edges)),
                                    binned.counts, int(sum(binned.counts)), len(values),
                                    psi_rows))
    if reference.labels is not None and len(window.labels) >= min_samples:
        names = list(reference.labels)
        expected = [reference.labels[n] for n in names]
        counts = window.label_counts()
        seen = [counts[n] for n in names]
        # Token-cls counts every word, but words of one input are not independent: the
        # level is simulated with one draw per input (wider, never narrower).
        size = reference.label_inputs or UNKNOWN_REFERENCE_SIZE
        out.append(_categorical(PREDICTED_LABEL, "psi", psi(expected, seen), expected, size,
                                len(window.labels), psi_rows))
        out.append(_categorical(PREDICTED_LABEL, "js", js_distance(expected, seen), expected,
                                size, len(window.labels), js_rows))
    embedding = reference.embedding
    if embedding is not None and len(window.embeddings) >= min_samples:
        sample = embedding.sample
        null = partial(mmd_null, sample, embedding.bandwidth, key=(EMBEDDING, "mmd"))
        out.append(Measure(EMBEDDING, "mmd",
                           mmd_rbf(sample, window.embedding_matrix(), embedding.bandwidth),
                           len(window.embeddings), len(sample),
                           lambda size: null(window=size)))
    return out + generation_measures(window, min_samples)


def generation_measures(window: VersionWindow, min_samples: int) -> list[Measure]:
    """Output length and token log-probability PSI of the window's comparable generations,
    each against its reference mixed in the window's own proportions of decodings."""
    reference = window.reference.generation
    live = list(window.generations)
    if reference is None or len(live) < min_samples:
        return []
    decodings = Counter(g.decoding for g in live)
    out = []
    for signal, mixture, values in (
            (OUTPUT_LENGTH, reference.output_length, [g.length for g in live]),
            (TOKEN_LOGPROB, reference.token_logprob, [g.logprob for g in live])):
        expected = mixture.expected(decodings)
        size = int(sum(float(np.sum(c)) for c in mixture.counts.values()))
        out.append(_categorical(signal, "psi",
                                psi(expected, bin_counts(values, mixture.edges)),
                                expected, size, len(live), psi_rows))
    return out


def scores_of(window: VersionWindow, min_samples: int) -> list[tuple[str, str, float]]:
    """Every score the window and its reference support: ``(signal, method, value)``."""
    return [(m.signal, m.method, m.value) for m in measures(window, min_samples)]


def assess(window: VersionWindow, min_samples: int) -> list[Assessed]:
    """Every score of the window with its alarm level (levels cached with the window)."""
    return [Assessed(m.signal, m.method, m.value,
                     window.levels.level(m.signal, m.method, m.window, m.null),
                     m.window, m.reference)
            for m in measures(window, min_samples)]
