"""Per-key FIFO queues served round-robin: the scheduler's waiting room.

Waiting requests are queued per fairness key (the tenant, or the adapter when no tenant is
known) and admitted round-robin across keys, one request per key per turn, so one key's
flood of requests delays another key's by at most one admission per key.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Per-key FIFO queues; :meth:`keys_in_turn` lists the keys in round-robin order."""

    def __init__(self, key: Callable[[T], str]) -> None:
        self._key = key
        self._queues: dict[str, deque[T]] = {}
        self._turns: deque[str] = deque()
        self.size = 0

    def push(self, item: T) -> None:
        """Append ``item`` to its key's queue (a new key goes to the back of the line)."""
        key = self._key(item)
        if key not in self._queues:
            self._queues[key] = deque()
            self._turns.append(key)
        self._queues[key].append(item)
        self.size += 1

    def count(self, key: str) -> int:
        """Items waiting under ``key``."""
        queue = self._queues.get(key)
        return len(queue) if queue else 0

    def remove(self, item: T) -> bool:
        """Take ``item`` out wherever it waits (a cancelled request); False if it is gone."""
        key = self._key(item)
        queue = self._queues.get(key)
        if queue is None:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        self.size -= 1
        if not queue:
            del self._queues[key]
            self._turns.remove(key)
        return True

    def keys_in_turn(self) -> list[str]:
        """Keys with waiting items, next to be served first."""
        return list(self._turns)

    def items(self) -> list[T]:
        """Every waiting item (a copy), grouped by key."""
        return [item for queue in self._queues.values() for item in queue]

    def peek(self, key: str) -> T:
        """The oldest item of ``key``."""
        return self._queues[key][0]

    def pop(self, key: str) -> T:
        """Take the oldest item of ``key``; the key goes to the back of the line."""
        queue = self._queues[key]
        item = queue.popleft()
        self.size -= 1
        self._turns.remove(key)
        if queue:
            self._turns.append(key)  # served: back of the line
        else:
            del self._queues[key]
        return item

    def drain(self) -> list[T]:
        """Take every waiting item."""
        items = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        self._turns.clear()
        self.size = 0
        return items
