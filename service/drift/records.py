"""The seam between the request path and drift/capture: one record per answered input."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.drift.scores import FloatArray


@dataclass(frozen=True)
class AdapterVersionRef:
    """One registered adapter version (the labels of every drift series)."""

    tenant: str
    adapter: str
    version: str

    @property
    def labels(self) -> tuple[str, str, str]:
        """``tenant, adapter, version`` for Prometheus."""
        return self.tenant, self.adapter, self.version


@dataclass(frozen=True)
class PredictionRecord:
    """What the service answered for one input, handed to the sink after the answer.

    ``embedding`` is the mean-pooled last hidden state of the input from the forward pass
    the request already ran (None where the engine path does not provide one).
    """

    prediction_id: str
    index: int
    ref: AdapterVersionRef
    task: str
    input_text: str
    input_tokens: int
    output: dict[str, Any]
    predicted_label: str | None = None
    confidence: float | None = None
    embedding: FloatArray | None = field(default=None, repr=False)
    created_at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        """Store-safe key of this input: ``{prediction_id}-{index}``."""
        return f"{self.prediction_id}-{self.index}"

    @staticmethod
    def as_vector(values: Any) -> FloatArray | None:
        """A float64 vector from an engine embedding (None stays None)."""
        return None if values is None else np.asarray(values, dtype=np.float64)


class PredictionSink(Protocol):
    """Receives records after each answer; must never block the event loop."""

    def submit(self, records: list[PredictionRecord]) -> None:
        """Queue the records of one answer (one per input)."""
        ...


def registry_ref(adapter: str | None, version: str | None) -> AdapterVersionRef | None:
    """The ref of a registered ``tenant/name`` adapter (None: base or dev adapter)."""
    if adapter is None or version is None or adapter.count("/") != 1:
        return None
    tenant, name = adapter.split("/")
    return AdapterVersionRef(tenant, name, version)


def classification_records(prediction_id: str, ref: AdapterVersionRef, task: str,
                           texts: list[str], outputs: list[dict[str, Any]],
                           results: list[Any]) -> list[PredictionRecord]:
    """One record per classified input; ``results`` are the engine's ClassificationResult."""
    records = []
    for index, (text, output, result) in enumerate(zip(texts, outputs, results, strict=True)):
        scores = output.get("scores") or {}
        label = output.get("label")
        records.append(PredictionRecord(
            prediction_id=prediction_id, index=index, ref=ref, task=task, input_text=text,
            input_tokens=result.prompt_tokens, output=output,
            predicted_label=label if isinstance(label, str) else None,
            confidence=float(scores[label]) if label in scores else None,
            embedding=PredictionRecord.as_vector(result.embedding)))
    return records


def generation_records(prediction_id: str, ref: AdapterVersionRef, texts: list[str],
                       outputs: list[dict[str, Any]], prompt_tokens: list[int],
                       ) -> list[PredictionRecord]:
    """One record per generated answer (no embedding: the prefill hook is not there yet)."""
    return [PredictionRecord(prediction_id=prediction_id, index=index, ref=ref,
                             task="causal-lm", input_text=text, input_tokens=tokens,
                             output=output)
            for index, (text, output, tokens) in enumerate(zip(texts, outputs, prompt_tokens,
                                                               strict=True))]


def submit_answer(sink: PredictionSink | None, response: Any, texts: list[str],
                  results: list[Any]) -> None:
    """The request path's one call: records of an answered ``PredictResponse`` to the sink.

    Base-model and development-adapter answers have no registry version: nothing is sent.
    """
    if sink is None:
        return
    ref = registry_ref(response.adapter, response.adapter_version)
    if ref is None:
        return
    outputs = [o.model_dump(mode="json") for o in response.outputs]
    task = str(response.task)
    if task == "causal-lm":
        records = generation_records(response.id, ref, texts, outputs,
                                     [r.prompt_tokens for r in results])
    else:
        records = classification_records(response.id, ref, task, texts, outputs, results)
    sink.submit(records)
