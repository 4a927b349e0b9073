"""The engine requests of one HTTP request, submitted together and cancelled together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from service.engine.classify import ClassificationResult, ClassificationStream
from service.engine.engine import LoraEngine
from service.engine.requests import GenerationEvent, RequestStream


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
