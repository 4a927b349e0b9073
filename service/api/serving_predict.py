"""``/v1/predict``: the native API over the shared generation service.

The adapter's task decides what a request does: a causal-lm adapter (or the base model)
generates text; a seq-cls adapter classifies each input; a token-cls adapter labels the
entities of each input. Classification takes raw texts only (no chat template, see
:mod:`service.api.classification`) and refuses generation parameters and ``stream``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from adapters.errors import InvalidRequestError, LoraswapError
from adapters.package import TaskKind, TextSplit
from service.adapter_source import ResolvedAdapter
from service.api.classification import EncodedInput, encode_input, sequence_output, token_output
from service.api.generation import (
    ClassificationBatch,
    GenerationService,
    ResolvedTarget,
    SubmittedBatch,
)
from service.api.prompts import PromptBuilder
from service.api.protocol import (
    PredictOutput,
    PredictRequest,
    PredictResponse,
    SequenceClassOutput,
    TokenClassOutput,
    Usage,
)
from service.drift.records import PredictionSink, submit_answer
from service.engine.classify import ClassificationResult
from service.engine.requests import GenerationEvent


def _sse(event: str, payload: object) -> str:
    return f"event: {event}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


class Prepared(Protocol):
    """A validated, submitted predict request, answered whole or as an event stream."""

    async def collect(self) -> PredictResponse:
        """Wait for every output."""
        ...

    def sse(self) -> AsyncIterator[str]:
        """Server-sent events ending with ``done`` (the whole answer)."""
        ...


@dataclass
class PreparedPredict:
    """A validated, submitted generation request; consumed whole or as an event stream."""

    request_id: str
    target: ResolvedTarget
    batch: SubmittedBatch
    # Drift/capture seam (service/drift): the input texts and where answers are recorded.
    texts: list[str] = field(default_factory=list)
    sink: PredictionSink | None = None

    def response(self, results: list[GenerationEvent]) -> PredictResponse:
        """The JSON answer for finished results."""
        prompt = sum(r.prompt_tokens for r in results)
        completion = sum(r.completion_tokens for r in results)
        return PredictResponse(
            id=self.request_id, adapter=self.target.name, adapter_version=self.target.version,
            task=self.target.task,
            outputs=[
                PredictOutput(text=r.text, tokens=r.completion_tokens,
                              finish_reason="stop" if r.finish_reason == "stop" else "length")
                for r in results
            ],
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion,
                        total_tokens=prompt + completion),
        )

    async def collect(self) -> PredictResponse:
        """Wait for every output."""
        results = await self.batch.collect()
        response = self.response(results)
        submit_answer(self.sink, response, self.texts, results)  # drift/capture seam
        return response

    async def sse(self) -> AsyncIterator[str]:
        """Server-sent events: ``token`` per chunk, then ``done`` with outputs and usage."""
        texts = ["" for _ in self.batch.streams]
        finals: list[GenerationEvent | None] = [None for _ in self.batch.streams]
        try:
            async for index, event in self.batch.events():
                texts[index] += event.text
                yield _sse("token", {"index": index, "text": event.text,
                                     "token_ids": list(event.token_ids)})
                if event.finished:
                    finals[index] = GenerationEvent(
                        text=texts[index], token_ids=(), finished=True,
                        finish_reason=event.finish_reason, prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens)
        except LoraswapError as exc:
            yield _sse("error", {"error": {"code": exc.code, "message": exc.message}})
            return
        done = [f for f in finals if f is not None]
        response = self.response(done)
        submit_answer(self.sink, response, self.texts, done)  # drift/capture seam
        yield _sse("done", response.model_dump())


@dataclass
class PreparedClassification:
    """A validated, submitted seq-cls / token-cls request."""

    request_id: str
    target: ResolvedTarget
    labels: list[str]
    inputs: list[EncodedInput]
    batch: ClassificationBatch
    sink: PredictionSink | None = None  # drift/capture seam (service/drift)

    def response(self, results: list[ClassificationResult]) -> PredictResponse:
        """Per input: the label and scores (seq-cls) or the entities (token-cls)."""
        outputs: list[PredictOutput | SequenceClassOutput | TokenClassOutput]
        if self.target.task is TaskKind.SEQ_CLS:
            outputs = [sequence_output(r.probs[0], self.labels) for r in results]
        else:
            outputs = [token_output(encoded, r.probs, self.labels)
                       for encoded, r in zip(self.inputs, results, strict=True)]
        prompt = sum(r.prompt_tokens for r in results)
        return PredictResponse(
            id=self.request_id, adapter=self.target.name, adapter_version=self.target.version,
            task=self.target.task, outputs=outputs,
            usage=Usage(prompt_tokens=prompt, completion_tokens=0, total_tokens=prompt),
        )

    async def collect(self) -> PredictResponse:
        """Wait for every input's result."""
        results = await self.batch.collect()
        response = self.response(results)
        submit_answer(self.sink, response, [i.text for i in self.inputs], results)  # drift
        return response

    async def sse(self) -> AsyncIterator[str]:
        """One ``done`` event with the whole answer (``stream`` is refused up front)."""
        try:
            response = await self.collect()
        except LoraswapError as exc:
            yield _sse("error", {"error": {"code": exc.code, "message": exc.message}})
            return
        yield _sse("done", response.model_dump(mode="json"))


def check_classification_body(body: PredictRequest, adapter: str, task: TaskKind) -> list[str]:
    """The input texts of a classification request; 400 naming what does not apply.

    ``raw`` is accepted either way: classification inputs are never templated.
    """
    what = f"adapter {adapter!r} is a {task} adapter"
    if body.stream:
        raise InvalidRequestError(
            f"stream is not supported: {what}, its answer comes whole in one response")
    given = sorted(body.parameters.model_fields_set)  # only what the client sent
    if given:
        raise InvalidRequestError(
            f"parameters {', '.join(given)} do not apply: {what} and does not generate text")
    if isinstance(body.inputs, str):
        return [body.inputs]
    texts = [i for i in body.inputs if isinstance(i, str)]
    if len(texts) != len(body.inputs):
        raise InvalidRequestError(
            f"chat messages are not accepted: {what}; send a text or a list of texts")
    return texts


def input_texts(body: PredictRequest) -> list[str]:
    """Each prompt's input as text, for drift capture (a chat is one JSON input)."""
    if isinstance(body.inputs, str):
        return [body.inputs]
    if all(isinstance(i, str) for i in body.inputs):
        return [str(i) for i in body.inputs]
    return [json.dumps([m.model_dump() for m in body.inputs if not isinstance(m, str)])]


class PredictService:
    """Validates predict requests, builds prompts and submits them to the engine."""

    def __init__(self, generation: GenerationService, prompts: PromptBuilder,
                 sink: PredictionSink | None = None) -> None:
        """``sink``: where answers are recorded for drift and capture (None: drift off)."""
        self._generation = generation
        self._prompts = prompts
        self._sink = sink

    async def prepare(self, body: PredictRequest, *, fairness_key: str) -> Prepared:
        """Resolve the adapter, tokenize, check limits and submit; raises 4xx errors early."""
        if not body.inputs and not isinstance(body.inputs, str):
            raise InvalidRequestError("inputs must not be an empty list")
        resolved = await self._generation.lookup(body.adapter)
        if resolved is not None and resolved.task.has_labels and body.adapter is not None:
            return await self._prepare_classification(body, body.adapter, resolved,
                                                      fairness_key)
        if isinstance(body.inputs, str):
            prompts = [self._prompts.from_text(body.inputs, raw=body.raw)]
        elif body.inputs and all(isinstance(i, str) for i in body.inputs):
            prompts = [self._prompts.from_text(str(i), raw=body.raw) for i in body.inputs]
        else:
            messages = [m.model_dump() for m in body.inputs if not isinstance(m, str)]
            prompts = [self._prompts.from_messages(messages)]
        p = body.parameters
        params = [
            self._prompts.sampling(
                len(prompt), max_new_tokens=p.max_new_tokens, temperature=p.temperature,
                top_p=p.top_p, seed=p.seed, stop=p.stop, ignore_eos=p.ignore_eos)
            for prompt in prompts
        ]
        target = await self._generation.load(body.adapter, resolved)
        request_id = f"pred-{uuid.uuid4().hex[:24]}"
        batch = self._generation.submit(target, prompts, params, request_id=request_id,
                                        fairness_key=fairness_key or target.label)
        texts = input_texts(body) if self._sink is not None else []  # drift/capture only
        return PreparedPredict(request_id, target, batch, texts, self._sink)

    async def _prepare_classification(self, body: PredictRequest, adapter: str,
                                      resolved: ResolvedAdapter, fairness_key: str,
                                      ) -> PreparedClassification:
        texts = check_classification_body(body, adapter, resolved.task)
        tokenizer = self._generation.engine.tokenizer
        offsets = resolved.task is TaskKind.TOKEN_CLS
        words = resolved.text_split is TextSplit.WORDS
        inputs = [encode_input(tokenizer, text, self._prompts.limits, offsets=offsets,
                               words=words) for text in texts]
        target = await self._generation.load(adapter, resolved)
        labels = target.class_names()
        request_id = f"pred-{uuid.uuid4().hex[:24]}"
        batch = self._generation.classify(target, [i.ids for i in inputs],
                                          request_id=request_id,
                                          fairness_key=fairness_key or target.label)
        return PreparedClassification(request_id, target, labels, inputs, batch, self._sink)
