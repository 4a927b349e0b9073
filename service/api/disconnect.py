"""Cancel work whose HTTP client has gone away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from adapters.errors import RequestCancelledError

T = TypeVar("T")
POLL_SECONDS = 0.2


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it (and so its engine requests) if the client disconnects."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_SECONDS)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise RequestCancelledError("client disconnected")
    finally:
        if not task.done():
            task.cancel()
