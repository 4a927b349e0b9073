"""Sliding windows of live signals, one per adapter version (drift thread only)."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from loraswap.service.drift.calibration import AlarmLevels
from loraswap.service.drift.records import PredictionRecord
from loraswap.service.drift.reference import ReferenceProfile
from loraswap.service.drift.scores import FloatArray


@dataclass(frozen=True)
class LiveGeneration:
    """One generation as the window compares it: its decoding, and its output length and
    mean token log-probability over the reference's first ``cap`` tokens."""

    decoding: str
    length: float
    logprob: float


@dataclass
class VersionWindow:
    """The last ``size`` inputs' signals of one adapter version, against its reference.

    ``labels`` holds each input's predicted labels: one for seq-cls, one per word for
    token-cls. ``generations`` holds only the generations comparable with the reference
    generations (decoded like one of them, with a limit of at least their ``cap``).
    """

    reference: ReferenceProfile
    size: int
    lengths: deque[float] = field(init=False)
    confidences: deque[float] = field(init=False)
    labels: deque[tuple[str, ...]] = field(init=False)
    embeddings: deque[FloatArray] = field(init=False)
    generations: deque[LiveGeneration] = field(init=False)
    dirty: bool = False
    # Alarm levels against ``reference`` (computed once per signal and window size).
    levels: AlarmLevels = field(init=False, default_factory=AlarmLevels)

    def __post_init__(self) -> None:
        self.lengths = deque(maxlen=self.size)
        self.confidences = deque(maxlen=self.size)
        self.labels = deque(maxlen=self.size)
        self.embeddings = deque(maxlen=self.size)
        self.generations = deque(maxlen=self.size)

    @property
    def samples(self) -> int:
        """Inputs in the window (every input counts, whatever signals it carried)."""
        return len(self.lengths)

    def add(self, record: PredictionRecord) -> None:
        """Append one input's signals (projected on the reference PCA basis)."""
        self.lengths.append(float(record.input_tokens))
        if record.confidence is not None:
            self.confidences.append(record.confidence)
        if record.word_tags:
            self.labels.append(record.word_tags)
        elif record.predicted_label is not None:
            self.labels.append((record.predicted_label,))
        embedding = self.reference.embedding
        if embedding is not None and record.embedding is not None \
                and record.embedding.shape == embedding.mean.shape:
            self.embeddings.append(embedding.project(record.embedding[None, :])[0])
        live = self._generation(record)
        if live is not None:
            self.generations.append(live)
        self.dirty = True

    def _generation(self, record: PredictionRecord) -> LiveGeneration | None:
        reference, signals = self.reference.generation, record.generation
        if reference is None or signals is None or signals.decoding not in reference.decodings:
            return None
        capped = signals.capped(reference.cap)
        if capped is None or signals.decoding is None:
            return None
        return LiveGeneration(signals.decoding, *capped)

    def label_counts(self) -> Counter[str]:
        """How often each label was predicted in the window (every word for token-cls)."""
        counts: Counter[str] = Counter()
        for labels in self.labels:
            counts.update(labels)
        return counts

    def use_reference(self, reference: ReferenceProfile) -> None:
        """Score against ``reference`` from now on (a profile that appeared after the
        window was opened). Lengths, labels and confidences are kept; embeddings were
        projected on the old reference's basis, and generations were kept only if the old
        reference could compare them, so both start again."""
        self.reference = reference
        self.levels = AlarmLevels()
        self.embeddings.clear()
        self.generations.clear()
        self.dirty = True

    def embedding_matrix(self) -> FloatArray:
        """The window's projected embeddings as one ``[n, components]`` array."""
        return np.stack(list(self.embeddings)) if self.embeddings else np.zeros((0, 0))
