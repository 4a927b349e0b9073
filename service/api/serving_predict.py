"""``/v1/predict``: the native API, translated to and from the shared request pipeline.

The adapter's task decides what a request does: a causal-lm adapter (or the base model)
generates text; a seq-cls adapter classifies each input; a token-cls adapter labels the
entities of each input. Classification takes raw texts only (no chat template, see
:mod:`loraswap.service.api.classification`) and refuses generation parameters and ``stream``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from loraswap.adapters.package import TaskKind, TextSplit
from loraswap.core.errors import InvalidRequestError, LoraswapError
from loraswap.service.api.answers import (
    finish_reason,
    prompt_usage,
    sse_event,
    usage_of,
)
from loraswap.service.api.batches import ClassificationBatch, SubmittedBatch
from loraswap.service.api.classification import (
    EncodedInput,
    encode_input,
    sequence_output,
    token_output,
    word_predictions,
)
from loraswap.service.api.logprobs_format import TokenTexts, native_logprob
from loraswap.service.api.pipeline import Prepared, ServingPipeline
from loraswap.service.api.prompts import PromptBuilder
from loraswap.service.api.protocol import (
    PredictOutput,
    PredictRequest,
    PredictResponse,
    SequenceClassOutput,
    TokenClassOutput,
)
from loraswap.service.auth import Tenant
from loraswap.service.drift.records import PredictionSink, submit_answer
from loraswap.service.engine.classify import ClassificationResult
from loraswap.service.engine.logits import TokenLogprob
from loraswap.service.engine.requests import GenerationEvent
from loraswap.service.engine.sampling import SamplingParams
from loraswap.service.targets import ServingTarget


def _error_event(exc: LoraswapError) -> str:
    return sse_event("error", {"error": {"code": exc.code, "message": exc.message}})


@dataclass
class PreparedPredict:
    """A submitted generation request; consumed whole or as an event stream."""

    request_id: str
    target: ServingTarget
    batch: SubmittedBatch
    # Drift/capture seam (service/drift): the input texts, where answers are recorded,
    # and each prompt's sampling (which reference its generation compares with).
    texts: list[str] = field(default_factory=list)
    sink: PredictionSink | None = None
    params: list[SamplingParams] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)
    token_texts: TokenTexts | None = None

    def _output(self, index: int, result: GenerationEvent) -> PredictOutput:
        params = self.params[index] if index < len(self.params) else None
        output = PredictOutput(text=result.text, tokens=result.completion_tokens,
                               finish_reason=finish_reason(result))
        if params is None or self.token_texts is None:
            return output
        texts = self.token_texts
        if params.logprobs is not None:
            output.logprobs = [native_logprob(texts, e) for e in result.logprobs]
        if params.prompt_logprobs is not None and result.prompt_logprobs is not None:
            # The first prompt token has no entry: nothing predicts it.
            output.prompt_logprobs = [native_logprob(texts, e) if e is not None else None
                                      for e in result.prompt_logprobs]
        return output

    def response(self, results: list[GenerationEvent]) -> PredictResponse:
        """The JSON answer for finished results."""
        return PredictResponse(
            id=self.request_id, adapter=self.target.adapter,
            adapter_version=self.target.version, task=self.target.task,
            outputs=[self._output(i, r) for i, r in enumerate(results)],
            usage=usage_of(results),
        )

    async def collect(self) -> PredictResponse:
        """Wait for every output."""
        results = await self.batch.collect()
        response = self.response(results)
        submit_answer(self.sink, self.target.key, response, self.texts, results,  # drift seam
                      params=self.params)
        return response

    async def sse(self) -> AsyncIterator[str]:
        """Server-sent events: ``token`` per chunk, then ``done`` with outputs and usage."""
        texts = ["" for _ in self.batch.streams]
        finals: list[GenerationEvent | None] = [None for _ in self.batch.streams]
        entries: list[list[TokenLogprob]] = [[] for _ in self.batch.streams]
        prompts: list[tuple[TokenLogprob | None, ...] | None] = [None for _ in self.batch.streams]
        try:
            async for index, event in self.batch.events():
                texts[index] += event.text
                entries[index].extend(event.logprobs)
                prompts[index] = prompts[index] or event.prompt_logprobs
                yield sse_event("token", {"index": index, "text": event.text,
                                          "token_ids": list(event.token_ids)})
                if event.finished:
                    finals[index] = GenerationEvent(
                        text=texts[index], token_ids=(), finished=True,
                        finish_reason=event.finish_reason, prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                        token_logprobs=event.token_logprobs, embedding=event.embedding,
                        logprobs=tuple(entries[index]),
                        prompt_logprobs=prompts[index])
        except LoraswapError as exc:
            yield _error_event(exc)
            return
        done = [f for f in finals if f is not None]
        response = self.response(done)
        submit_answer(self.sink, self.target.key, response, self.texts, done,  # drift seam
                      params=self.params)
        yield sse_event("done", response)


@dataclass
class PreparedClassification:
    """A submitted seq-cls / token-cls request."""

    request_id: str
    target: ServingTarget
    inputs: list[EncodedInput]
    batch: ClassificationBatch
    sink: PredictionSink | None = None  # drift/capture seam (service/drift)

    def response(self, results: list[ClassificationResult]) -> PredictResponse:
        """Per input: the label and scores (seq-cls) or the entities (token-cls)."""
        labels = self.target.class_names()
        outputs: list[PredictOutput | SequenceClassOutput | TokenClassOutput]
        if self.target.task is TaskKind.SEQ_CLS:
            outputs = [sequence_output(r.probs[0], labels) for r in results]
        else:
            outputs = [token_output(encoded, r.probs, labels)
                       for encoded, r in zip(self.inputs, results, strict=True)]
        return PredictResponse(
            id=self.request_id, adapter=self.target.adapter,
            adapter_version=self.target.version, task=self.target.task, outputs=outputs,
            usage=prompt_usage(sum(r.prompt_tokens for r in results)),
        )

    async def collect(self) -> PredictResponse:
        """Wait for every input's result."""
        results = await self.batch.collect()
        response = self.response(results)
        if self.sink is not None:  # drift/capture seam
            words = None
            if self.target.task is TaskKind.TOKEN_CLS:
                labels = self.target.class_names()
                words = [word_predictions(encoded, r.probs, labels)
                         for encoded, r in zip(self.inputs, results, strict=True)]
            submit_answer(self.sink, self.target.key, response,
                          [i.text for i in self.inputs], results, words=words)
        return response

    async def sse(self) -> AsyncIterator[str]:
        """One ``done`` event with the whole answer (``stream`` is refused up front)."""
        try:
            response = await self.collect()
        except LoraswapError as exc:
            yield _error_event(exc)
            return
        yield sse_event("done", response)


def check_classification_body(body: PredictRequest, target: ServingTarget) -> None:
    """400 naming what does not apply to a classification adapter.

    ``raw`` is accepted either way: classification inputs are never templated.
    """
    what = f"adapter {target.name!r} is a {target.task} adapter"
    if body.stream:
        raise InvalidRequestError(
            f"stream is not supported: {what}, its answer comes whole in one response")
    given = sorted(body.parameters.model_fields_set)  # only what the client sent
    if given:
        raise InvalidRequestError(
            f"parameters {', '.join(given)} do not apply: {what} and does not generate text")
    if not isinstance(body.inputs, str) and any(not isinstance(i, str) for i in body.inputs):
        raise InvalidRequestError(
            f"chat messages are not accepted: {what}; send a text or a list of texts")


def input_texts(body: PredictRequest) -> list[str]:
    """Each prompt's input as text, for drift capture (a chat is one JSON input)."""
    if isinstance(body.inputs, str):
        return [body.inputs]
    if all(isinstance(i, str) for i in body.inputs):
        return [str(i) for i in body.inputs]
    return [json.dumps([m.model_dump() for m in body.inputs if not isinstance(m, str)])]


@dataclass(frozen=True)
class PredictWork:
    """A ``/v1/predict`` body encoded: prompts, and sampling (generation) or each input's
    encoding (classification, for the answer's labels and spans)."""

    prompts: list[list[int]]
    params: list[SamplingParams] | None
    inputs: list[EncodedInput] = field(default_factory=list)


@dataclass
class PredictPlan:
    """One ``/v1/predict`` body, as the pipeline runs it; ``sink`` records its answers for
    drift and capture (None: drift off)."""

    body: PredictRequest
    prompts: PromptBuilder
    sink: PredictionSink | None = None

    @property
    def adapter(self) -> str | None:
        """The adapter named, None for the base model."""
        return self.body.adapter

    @property
    def inputs(self) -> int:
        """Texts are one engine request each; a conversation is one."""
        inputs = self.body.inputs
        if isinstance(inputs, str) or not all(isinstance(i, str) for i in inputs):
            return 1
        return len(inputs)

    @property
    def stream(self) -> bool:
        """Whether the answer is streamed."""
        return self.body.stream

    def check(self, target: ServingTarget) -> None:
        """Inputs present; classification bodies carry no generation fields."""
        if not self.body.inputs and not isinstance(self.body.inputs, str):
            raise InvalidRequestError("inputs must not be an empty list")
        if target.task.has_labels:
            check_classification_body(self.body, target)

    @property
    def id_prefix(self) -> str:
        """``pred-…`` answers."""
        return "pred"

    def encode(self, target: ServingTarget) -> PredictWork:
        """Tokenize the inputs for the target's task (on the tokenizer thread)."""
        if target.task.has_labels:
            tokenizer, limits = self.prompts.tokenizer, self.prompts.limits
            offsets = target.task is TaskKind.TOKEN_CLS
            words = target.traits.text_split is TextSplit.WORDS
            inputs = [encode_input(tokenizer, text, limits, offsets=offsets, words=words)
                      for text in self._texts()]
            return PredictWork([i.ids for i in inputs], None, inputs)
        prompts = self._tokenize_generation()
        p = self.body.parameters
        params = [
            self.prompts.sampling(
                len(prompt), max_new_tokens=p.max_new_tokens, temperature=p.temperature,
                top_p=p.top_p, seed=p.seed, stop=p.stop, ignore_eos=p.ignore_eos,
                logprobs=p.logprobs, prompt_logprobs=p.prompt_logprobs)
            for prompt in prompts
        ]
        return PredictWork(prompts, params)

    def render(self, target: ServingTarget, work: PredictWork,
               batch: SubmittedBatch | ClassificationBatch, request_id: str) -> Prepared:
        """The generation or classification answer of the queued ``batch``."""
        if isinstance(batch, ClassificationBatch):
            return PreparedClassification(request_id, target, work.inputs, batch, self.sink)
        texts = input_texts(self.body) if self.sink is not None else []  # drift only
        return PreparedPredict(request_id, target, batch, texts, self.sink, work.params or [],
                               work.prompts, TokenTexts(self.prompts.tokenizer))

    def _texts(self) -> list[str]:
        inputs = self.body.inputs
        return [inputs] if isinstance(inputs, str) else [str(i) for i in inputs]

    def _tokenize_generation(self) -> list[list[int]]:
        body = self.body
        if isinstance(body.inputs, str) or all(isinstance(i, str) for i in body.inputs):
            return [self.prompts.from_text(text, raw=body.raw) for text in self._texts()]
        messages = [m.model_dump() for m in body.inputs if not isinstance(m, str)]
        return [self.prompts.from_messages(messages)]


class PredictService:
    """The native API over the shared pipeline."""

    def __init__(self, pipeline: ServingPipeline, prompts: PromptBuilder,
                 sink: PredictionSink | None = None) -> None:
        """``sink``: where answers are recorded for drift and capture (None: drift off)."""
        self._pipeline = pipeline
        self._prompts = prompts
        self._sink = sink

    async def predict(self, body: PredictRequest, request: Request, tenant: Tenant | None,
                      ) -> BaseModel | StreamingResponse:
        """Answer ``body`` whole, or as server-sent events when it asks to stream."""
        plan = PredictPlan(body, self._prompts, self._sink)
        return await self._pipeline.answer(request, tenant, plan)
