"""Sliding windows of live signals, one per adapter version (drift thread only)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from service.drift.records import PredictionRecord
from service.drift.reference import ReferenceProfile
from service.drift.scores import FloatArray


@dataclass
class VersionWindow:
    """The last ``size`` inputs' signals of one adapter version, against its reference."""

    reference: ReferenceProfile
    size: int
    lengths: deque[float] = field(init=False)
    confidences: deque[float] = field(init=False)
    labels: deque[str] = field(init=False)
    embeddings: deque[FloatArray] = field(init=False)
    dirty: bool = False

    def __post_init__(self) -> None:
        self.lengths = deque(maxlen=self.size)
        self.confidences = deque(maxlen=self.size)
        self.labels = deque(maxlen=self.size)
        self.embeddings = deque(maxlen=self.size)

    @property
    def samples(self) -> int:
        """Inputs in the window (every input counts, whatever signals it carried)."""
        return len(self.lengths)

    def add(self, record: PredictionRecord) -> None:
        """Append one input's signals (projected on the reference PCA basis)."""
        self.lengths.append(float(record.input_tokens))
        if record.confidence is not None:
            self.confidences.append(record.confidence)
        if record.predicted_label is not None:
            self.labels.append(record.predicted_label)
        embedding = self.reference.embedding
        if embedding is not None and record.embedding is not None \
                and record.embedding.shape == embedding.mean.shape:
            self.embeddings.append(embedding.project(record.embedding[None, :])[0])
        self.dirty = True

    def use_reference(self, reference: ReferenceProfile) -> None:
        """Score against ``reference`` from now on (a profile that appeared after the
        window was opened). Lengths, labels and confidences are kept; embeddings were
        projected on the old reference's basis, so they start again."""
        self.reference = reference
        self.embeddings.clear()
        self.dirty = True

    def embedding_matrix(self) -> FloatArray:
        """The window's projected embeddings as one ``[n, components]`` array."""
        return np.stack(list(self.embeddings)) if self.embeddings else np.zeros((0, 0))
