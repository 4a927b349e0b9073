"""The seam between the request path and drift/capture: one record per answered input."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from loraswap.adapters.package import TaskKind
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.drift.scores import FloatArray

# How a generation was decoded, as far as drift is concerned: the profile of a causal-lm
# adapter holds reference generations of both kinds (training/profile.py), and a window
# compares each live generation only with the reference decoded the same way.
GREEDY = "greedy"
SAMPLED = "sampled"  # temperature 1 and top_p 1: the model's own distribution


def decoding_of(params: Any) -> str | None:
    """:data:`GREEDY`, :data:`SAMPLED`, or None for settings no reference was generated
    with (another temperature or top_p, stop strings, ``ignore_eos``, a grammar): their
    outputs are not comparable with the reference's, so they feed no generation signal.

    ``params`` is the request's :class:`loraswap.service.engine.sampling.SamplingParams`.
    """
    if params.stop or params.ignore_eos or getattr(params, "grammar", None) is not None:
        return None
    if params.greedy:
        return GREEDY
    if params.temperature == 1.0 and params.top_p == 1.0:
        return SAMPLED
    return None


@dataclass(frozen=True)
class GenerationSignals:
    """What comparing one generation with the reference generations needs."""

    token_logprobs: tuple[float, ...]  # natural log, model's own distribution, per token
    decoding: str | None  # see decoding_of
    max_new_tokens: int  # the request's own limit (after clipping to the context)

    def capped(self, cap: int) -> tuple[float, float] | None:
        """Output length and mean log-probability of the first ``cap`` tokens: what the
        reference generations (limited to ``cap`` new tokens) measured. None when this
        generation cannot be compared: a limit under ``cap`` cuts lengths the reference
        did not cut, and a generation without tokens or with a non-finite log-probability
        has no mean."""
        if self.max_new_tokens < cap or not self.token_logprobs:
            return None
        head = self.token_logprobs[:cap]
        if not all(math.isfinite(v) for v in head):
            return None
        return float(len(head)), sum(head) / len(head)


@dataclass(frozen=True)
class WordPredictions:
    """token-cls: the predicted tag of each word of one input, and the mean over its words
    of the top tag's probability (None: no words)."""

    tags: tuple[str, ...]
    confidence: float | None


@dataclass(frozen=True)
class PredictionRecord:
    """What the service answered for one input, handed to the sink after the answer.

    ``embedding`` is the mean-pooled last hidden state of the input from the forward pass
    the request already ran (None where the engine path does not provide one).
    ``word_tags`` (token-cls) are the predicted tag of each word. ``output_tokens`` and
    ``mean_logprob`` (causal-lm) are the generated tokens and their mean natural-log
    probability under the model's own distribution; ``generation`` holds what comparing
    them with the profile's reference generations needs.
    """

    prediction_id: str
    index: int
    ref: AdapterVersionRef  # a registered version (tenant/name@number)
    task: TaskKind
    input_text: str
    input_tokens: int
    output: dict[str, Any]
    predicted_label: str | None = None
    confidence: float | None = None
    embedding: FloatArray | None = field(default=None, repr=False)
    created_at: float = field(default_factory=time.time)
    word_tags: tuple[str, ...] = field(default=(), repr=False)
    output_tokens: int | None = None
    mean_logprob: float | None = None
    generation: GenerationSignals | None = field(default=None, repr=False)

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


def registered(key: AdapterVersionRef | None) -> AdapterVersionRef | None:
    """``key`` when it is a registered version; None for the base model and development
    adapters, which drift does not watch (they have no registry version or profile)."""
    return key if key is not None and key.ref.is_registered else None


def classification_records(prediction_id: str, ref: AdapterVersionRef, task: TaskKind,
                           texts: list[str], outputs: list[dict[str, Any]],
                           results: list[Any], words: list[WordPredictions] | None = None,
                           ) -> list[PredictionRecord]:
    """One record per classified input; ``results`` are the engine's ClassificationResult,
    ``words`` (token-cls) each input's word predictions."""
    records = []
    for index, (text, output, result) in enumerate(zip(texts, outputs, results, strict=True)):
        scores = output.get("scores") or {}
        label = output.get("label")
        confidence = float(scores[label]) if label in scores else None
        tags: tuple[str, ...] = ()
        if words is not None:
            tags, confidence = words[index].tags, words[index].confidence
        records.append(PredictionRecord(
            prediction_id=prediction_id, index=index, ref=ref, task=task, input_text=text,
            input_tokens=result.prompt_tokens, output=output,
            predicted_label=label if isinstance(label, str) else None,
            confidence=confidence, embedding=PredictionRecord.as_vector(result.embedding),
            word_tags=tags))
    return records


def generation_records(prediction_id: str, ref: AdapterVersionRef, texts: list[str],
                       outputs: list[dict[str, Any]], results: list[Any],
                       params: list[Any] | None = None) -> list[PredictionRecord]:
    """One record per generated answer; ``results`` are the finished GenerationEvents,
    ``params`` each one's SamplingParams (None: decoding unknown, no generation signals)."""
    records = []
    for index, (text, output, result) in enumerate(zip(texts, outputs, results, strict=True)):
        sampling = params[index] if params is not None else None
        signals = None if sampling is None else GenerationSignals(
            tuple(result.token_logprobs), decoding_of(sampling), sampling.max_new_tokens)
        records.append(PredictionRecord(
            prediction_id=prediction_id, index=index, ref=ref, task=TaskKind.CAUSAL_LM,
            input_text=text, input_tokens=result.prompt_tokens, output=output,
            embedding=PredictionRecord.as_vector(result.embedding),
            output_tokens=result.completion_tokens, mean_logprob=result.mean_logprob,
            generation=signals))
    return records


def submit_generations(sink: PredictionSink | None, prediction_id: str,
                       key: AdapterVersionRef | None, texts: list[str],
                       outputs: list[dict[str, Any]], results: list[Any],
                       params: list[Any] | None) -> None:
    """Records of one answered generation request (native or OpenAI) to the sink; base
    model and development adapters have no registry version: nothing is sent."""
    ref = registered(key)
    if sink is None or ref is None:
        return
    sink.submit(generation_records(prediction_id, ref, texts, outputs, results, params))


def submit_answer(sink: PredictionSink | None, key: AdapterVersionRef | None, response: Any,
                  texts: list[str], results: list[Any], *, params: list[Any] | None = None,
                  words: list[WordPredictions] | None = None) -> None:
    """The native API's one call: records of an answered ``PredictResponse`` to the sink.

    ``key``: the version that answered (the request's resolved target).
    ``params``: each generation's SamplingParams; ``words``: each token-cls input's word
    predictions. Base-model and development-adapter answers have no registry version:
    nothing is sent.
    """
    if sink is None:
        return
    outputs = [o.model_dump(mode="json") for o in response.outputs]
    task = TaskKind(response.task)
    if task is TaskKind.CAUSAL_LM:
        submit_generations(sink, response.id, key, texts, outputs, results, params)
        return
    ref = registered(key)
    if ref is not None:
        sink.submit(classification_records(response.id, ref, task, texts, outputs, results,
                                           words))
