"""The engine requests of one HTTP request: submitted together, cancelled together, and
cancelled when the client goes away.

A disconnect is raced, not polled: polling ``request.is_disconnected()`` misses disconnects
behind middleware that wraps the ASGI channel, so the work runs beside a task that waits
for the server's ``http.disconnect`` message, and whichever ends first decides. The request
body has been read by then, so the next message on the channel can only be the disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from fastapi import Request

from loraswap.service.engine.classify import ClassificationResult, ClassificationStream
from loraswap.service.engine.engine import LoraEngine
from loraswap.service.engine.requests import GenerationEvent, RequestStream
from loraswap.service.errors import RequestCancelledError

T = TypeVar("T")
S = TypeVar("S", RequestStream, ClassificationStream)
R = TypeVar("R")


class EngineBatch(Generic[S, R]):
    """The engine requests of one HTTP request; cancelled together, on failure too."""

    def __init__(self, engine: LoraEngine, streams: list[S],
                 outcome: Callable[[S], Awaitable[R]]) -> None:
        self._engine = engine
        self._outcome: Callable[[S], Awaitable[R]] = outcome
        self.streams: list[S] = streams

    def cancel(self) -> None:
        """Drop every request of the batch that has not finished."""
        for stream in self.streams:
            self._engine.cancel(stream)

    async def collect(self) -> list[R]:
        """Every request's outcome, in order."""
        try:
            return list(await asyncio.gather(*(self._outcome(s) for s in self.streams)))
        except BaseException:
            self.cancel()
            raise


class SubmittedBatch(EngineBatch[RequestStream, GenerationEvent]):
    """Prompts of one HTTP request, whole or as their events interleave."""

    def __init__(self, engine: LoraEngine, streams: list[RequestStream]) -> None:
        super().__init__(engine, streams, RequestStream.collect)

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


class ClassificationBatch(EngineBatch[ClassificationStream, ClassificationResult]):
    """Inputs of one HTTP request submitted for classification."""

    def __init__(self, engine: LoraEngine, streams: list[ClassificationStream]) -> None:
        super().__init__(engine, streams, ClassificationStream.result)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it (and so its engine requests) if the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise RequestCancelledError("client disconnected")
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
