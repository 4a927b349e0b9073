"""Adapter resolution and engine submission shared by the native and OpenAI APIs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from adapters.lora_format import LoraAdapterWeights
from service.adapter_source import AdapterResolver
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

    @property
    def label(self) -> str:
        """Metrics label: the adapter name, or "base"."""
        return self.name or "base"


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


class GenerationService:
    """Resolves adapters through the registry/cache tiers and submits work to the engine."""

    def __init__(self, engine: LoraEngine, resolver: AdapterResolver,
                 metrics: ServiceMetrics) -> None:
        self.engine = engine
        self.resolver = resolver
        self.metrics = metrics

    async def resolve(self, name: str | None) -> ResolvedTarget:
        """The target for an adapter name (None = the base model)."""
        if name is None:
            return ResolvedTarget(None, None, None)
        resolved = self.resolver.resolve(name)
        weights = await self.engine.adapter_weights(resolved.key, resolved.read)
        return ResolvedTarget(name, resolved.key, weights)

    def submit(self, target: ResolvedTarget, prompts: list[list[int]],
               params: list[SamplingParams], *, request_id: str, fairness_key: str,
               ) -> SubmittedBatch:
        """Queue every prompt; if the queue refuses one, the ones before it are dropped."""
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
