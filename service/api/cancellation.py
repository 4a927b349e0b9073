"""Cancel work whose HTTP client has gone away, by racing it against the disconnect.

Polling ``request.is_disconnected()`` misses disconnects behind middleware that wraps the
ASGI channel; instead the work runs beside a task that waits for the server's
``http.disconnect`` message, and whichever ends first decides. The request body has been
read by the time this runs, so the next message on the channel can only be the disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from service.errors import RequestCancelledError

T = TypeVar("T")


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
