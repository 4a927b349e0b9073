"""Per-key FIFO queues served round-robin: the scheduler's waiting room.

Waiting requests are queued per fairness key (the tenant, or the adapter when no tenant is
known) and admitted round-robin across keys, one request per key per turn, so one key's
flood of requests delays another key's by at most one admission per key.

A key's share is counted before its requests exist: an HTTP request *reserves* its places
(:meth:`FairQueue.reserve`) before it is tokenized, so a caller over its share is refused
before any work is spent on it, and requests still being tokenized count against their
caller's share (only waiting items fill the queue itself). When the queue is full, the key
holding the most places gives up its newest waiting items to a key holding fewer
(:meth:`FairQueue.room_for`, "longest queue drop"), so a full queue never locks a light key
out behind a heavy one, whatever the shares add up to.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Per-key FIFO queues; :meth:`keys_in_turn` lists the keys in round-robin order."""

    def __init__(self, key: Callable[[T], str]) -> None:
        self._key = key
        self._queues: dict[str, deque[T]] = {}
        self._turns: deque[str] = deque()
        self._reserved: Counter[str] = Counter()
        self.size = 0  # items waiting

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
        self._took_from(key, queue)
        return True

    def _took_from(self, key: str, queue: deque[T]) -> None:
        """Count an item taken from ``key``'s queue; a key left empty loses its turn."""
        self.size -= 1
        if not queue:
            del self._queues[key]
            self._turns.remove(key)

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

    def held(self, key: str) -> int:
        """Places ``key`` holds: its waiting items and its reserved places."""
        return self.count(key) + self._reserved[key]

    @property
    def held_total(self) -> int:
        """Places held by every key."""
        return self.size + self._reserved.total()

    def reserve(self, key: str, places: int) -> None:
        """Count ``places`` more for ``key`` (requests still being prepared)."""
        self._reserved[key] += places

    def unreserve(self, key: str, places: int) -> None:
        """Give back ``places`` reserved by ``key`` (used by its pushes, or never used)."""
        self._reserved[key] -= places
        if self._reserved[key] <= 0:
            del self._reserved[key]

    def room_for(self, key: str, places: int, capacity: int) -> Counter[str] | None:
        """How many of their newest waiting items which keys must give up so that ``places``
        more items of ``key`` fit in ``capacity`` (empty: they fit), or None when they cannot:
        only a key that would still hold more places than ``key`` gives one up (the most
        held first; ties: the key served last)."""
        held = {k: self.held(k) for k in reversed(self._turns)}
        mine, victims = self.held(key) + places, Counter[str]()
        for _ in range(self.size + places - capacity):
            longest = max((k for k in held if len(self._queues[k]) > victims[k]),
                          key=held.__getitem__, default=None)
            if longest is None or longest == key or held[longest] <= mine:
                return None
            held[longest] -= 1
            victims[longest] += 1
        return victims

    def push_out(self, victims: Counter[str]) -> list[T]:
        """Take the newest waiting items of each key, as many as ``victims`` says."""
        return [self._pop_newest(k) for k, n in victims.items() for _ in range(n)]

    def _pop_newest(self, key: str) -> T:
        queue = self._queues[key]
        item = queue.pop()
        self._took_from(key, queue)
        return item

    def drain(self) -> list[T]:
        """Take every waiting item."""
        items = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        self._turns.clear()
        self.size = 0
        return items


class QueuePlaces:
    """Places one HTTP request holds in the queue while its engine requests are prepared
    (tokenized): each submit takes one (:meth:`take`); :meth:`release` (or the end of a
    ``with`` block) gives back those never taken."""

    def __init__(self, key: str, places: int, give_back: Callable[[str, int], None]) -> None:
        self.key = key
        self._left = places
        self._give_back = give_back

    def take(self) -> bool:
        """Use one place for a submit; False when every place is used already."""
        if self._left <= 0:
            return False
        self._left -= 1
        return True

    def release(self) -> None:
        """Give back the places not taken (idempotent)."""
        left, self._left = self._left, 0
        if left:
            self._give_back(self.key, left)

    def __enter__(self) -> QueuePlaces:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
