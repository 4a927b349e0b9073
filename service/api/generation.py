"""Adapter resolution and engine submission shared by the native and OpenAI APIs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from adapters.errors import AdapterValidationError, InvalidRequestError
from adapters.lora_format import LoraAdapterWeights
from adapters.package import AttentionMode, TaskKind
from service.adapter_source import AdapterResolver, ResolvedAdapter
from service.engine.classify import (
    ClassificationRequest,
    ClassificationResult,
    ClassificationStream,
)
from service.engine.engine import LoraEngine
from service.engine.requests import GenerationEvent, GenerationRequest, RequestStream
from service.engine.residency import AdapterKey
from service.engine.sampling import SamplingParams
from service.metrics import ServiceMetrics


@dataclass(frozen=True)
class ResolvedTarget:
    """The adapter (or the base) a request runs on, with its decoded weights."""

    name: str | None
    key: AdapterKey | None
    weights: LoraAdapterWeights | None
    task: TaskKind = TaskKind.CAUSAL_LM
    labels: tuple[str, ...] | None = None
    attention: AttentionMode = AttentionMode.CAUSAL

    @property
    def label(self) -> str:
        """Metrics label: the adapter name, or "base"."""
        return self.name or "base"

    @property
    def version(self) -> str | None:
        """The adapter version served (None for the base)."""
        return self.key.version if self.key else None

    def class_names(self) -> list[str]:
        """Names of the head's outputs, in order: the adapter's labels, else "LABEL_<i>"."""
        head = self.weights.head if self.weights else None
        if head is None:
            raise AdapterValidationError(
                f"{self.label}: a {self.task} adapter needs a classification head, "
                "and its weights have none")
        if self.labels is None:
            return [f"LABEL_{i}" for i in range(head.num_labels)]
        if len(self.labels) != head.num_labels:
            raise AdapterValidationError(
                f"{self.label}: the manifest lists {len(self.labels)} labels, "
                f"the classification head has {head.num_labels} outputs")
        return list(self.labels)


class SubmittedBatch:
    """Prompts of one HTTP request, submitted together; cancelled together on failure."""

    def __init__(self, engine: LoraEngine, streams: list[RequestStream]) -> None:
        self._engine = engine
        self.streams = streams

    def cancel(self) -> None:
        """Drop every prompt of the batch from the engine."""
        for stream in self.streams:
            self._engine.cancel(stream)

    async def collect(self) -> list[GenerationEvent]:
        """Final result of every prompt, in order."""
        try:
            return list(await asyncio.gather(*(s.collect() for s in self.streams)))
        except BaseException:
            self.cancel()
            raise

    async def events(self) -> AsyncIterator[tuple[int, GenerationEvent]]:
        """Events of all prompts as they come, tagged with the prompt's index."""
        merged: asyncio.Queue[tuple[int, GenerationEvent] | BaseException] = asyncio.Queue()

        async def forward(index: int, stream: RequestStream) -> None:
            try:
                async for event in stream.events():
                    await merged.put((index, event))
            except Exception as exc:  # delivered to the consumer, which re-raises it
                await merged.put(exc)

        tasks = [asyncio.create_task(forward(i, s)) for i, s in enumerate(self.streams)]
        remaining = len(self.streams)
        try:
            while remaining:
                item = await merged.get()
                if isinstance(item, BaseException):
                    raise item
                if item[1].finished:
                    remaining -= 1
                yield item
        finally:
            self.cancel()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class ClassificationBatch:
    """Inputs of one HTTP request submitted for classification; cancelled together."""

    def __init__(self, engine: LoraEngine, streams: list[ClassificationStream]) -> None:
        self._engine = engine
        self.streams = streams

    def cancel(self) -> None:
        """Drop every input of the batch that has not run yet."""
        for stream in self.streams:
            self._engine.cancel(stream)

    async def collect(self) -> list[ClassificationResult]:
        """Every input's probabilities, in order."""
        try:
            return list(await asyncio.gather(*(s.result() for s in self.streams)))
        except BaseException:
            self.cancel()
            raise


class GenerationService:
    """Resolves adapters through the registry/cache tiers and submits work to the engine."""

    def __init__(self, engine: LoraEngine, resolver: AdapterResolver,
                 metrics: ServiceMetrics) -> None:
        self.engine = engine
        self.resolver = resolver
        self.metrics = metrics

    async def lookup(self, name: str | None) -> ResolvedAdapter | None:
        """Which adapter version ``name`` means, and its task (None = the base model).

        Cheap next to :meth:`load`; the resolver may read the store, so it runs off the loop.
        """
        if name is None:
            return None
        return await asyncio.to_thread(self.resolver.resolve, name)

    async def load(self, name: str | None, resolved: ResolvedAdapter | None) -> ResolvedTarget:
        """The target of a looked-up adapter, with its decoded (and checked) weights."""
        if name is None or resolved is None:
            return ResolvedTarget(None, None, None)
        weights = await self.engine.adapter_weights(resolved.key, resolved.read)
        return ResolvedTarget(name, resolved.key, weights, resolved.task, resolved.labels,
                              resolved.attention)

    async def resolve(self, name: str | None) -> ResolvedTarget:
        """The target for an adapter name (None = the base model)."""
        return await self.load(name, await self.lookup(name))

    def submit(self, target: ResolvedTarget, prompts: list[list[int]],
               params: list[SamplingParams], *, request_id: str, fairness_key: str,
               ) -> SubmittedBatch:
        """Queue every prompt; if the queue refuses one, the ones before it are dropped."""
        if target.task is not TaskKind.CAUSAL_LM:
            raise InvalidRequestError(
                f"adapter {target.label!r} is a {target.task} adapter and does not generate "
                "text; use POST /v1/predict")
        streams: list[RequestStream] = []
        batch = SubmittedBatch(self.engine, streams)
        try:
            for index, (prompt, sampling) in enumerate(zip(prompts, params, strict=True)):
                request = GenerationRequest(
                    request_id=f"{request_id}-{index}", prompt_ids=prompt, params=sampling,
                    adapter=target.key, adapter_weights=target.weights,
                    fairness_key=fairness_key,
                )
                streams.append(self.engine.submit(request))
                self.metrics.prompt_tokens.labels(target.label).inc(len(prompt))
        except BaseException:
            batch.cancel()
            raise
        return batch

    def classify(self, target: ResolvedTarget, prompts: list[list[int]], *, request_id: str,
                 fairness_key: str) -> ClassificationBatch:
        """Queue every input of a seq-cls / token-cls request; all or none stay queued."""
        if target.key is None or target.weights is None or not target.task.has_labels:
            raise InvalidRequestError(f"{target.label!r} is not a classification adapter")
        streams: list[ClassificationStream] = []
        batch = ClassificationBatch(self.engine, streams)
        try:
            for index, prompt in enumerate(prompts):
                request = ClassificationRequest(
                    request_id=f"{request_id}-{index}", prompt_ids=prompt, task=target.task,
                    adapter=target.key, adapter_weights=target.weights,
                    fairness_key=fairness_key, attention=target.attention,
                )
                streams.append(self.engine.classify(request))
                self.metrics.prompt_tokens.labels(target.label).inc(len(prompt))
        except BaseException:
            batch.cancel()
            raise
        return batch
