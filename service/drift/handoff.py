"""The request path's hand-off to a drift worker thread: no lock, no wake-up per answer.

A ``queue.Queue.put`` takes a lock and notifies a condition, which wakes the worker for
every answer; the woken worker then asks for the GIL while the event loop and the engine
thread hold or want it. On a machine with more runnable threads than cores a woken thread
can be preempted while it holds the GIL, and the engine thread waits for it: the cost grows
with the machine's load, not with the (small) work done per answer. Here the producer only
appends to a deque (atomic under the GIL: no lock, no system call) and the worker drains
everything that waits every ``poll_seconds``, or at once when someone needs it now
(:meth:`Handoff.wake`: flush, stop).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")
# How often a worker drains its hand-off: drift scores every few seconds and capture
# batches every few seconds, so half a second of delay changes nothing they report.
POLL_SECONDS = 0.5


class Handoff(Generic[T]):
    """A bounded hand-off from any thread to one worker thread that polls it.

    ``put`` refuses (returns False) once ``capacity`` items wait, so the caller can count
    the drop; with several producers the bound can be passed by a few items (the check and
    the append are not one atomic step), which is harmless. ``force`` ignores the bound,
    for control items and records that must not be lost (feedback).
    """

    def __init__(self, capacity: int, poll_seconds: float) -> None:
        self._items: deque[T] = deque()
        self._capacity = capacity
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, *, force: bool = False) -> bool:
        """Append ``item`` (never blocks, never wakes the worker); False when full."""
        if not force and len(self._items) >= self._capacity:
            return False
        self._items.append(item)
        return True

    def wake(self) -> None:
        """Make the worker drain now instead of at its next poll."""
        self._wake.set()

    def wait(self, timeout: float) -> None:
        """Worker side: sleep until woken or ``timeout`` (at most ``poll_seconds``)."""
        self._wake.wait(max(0.0, min(timeout, self.poll_seconds)))
        self._wake.clear()

    def drain(self) -> list[T]:
        """Worker side: every waiting item, oldest first."""
        out: list[T] = []
        while True:
            try:
                out.append(self._items.popleft())
            except IndexError:
                return out
