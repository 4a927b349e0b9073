"""Admission: the waiting queue between the event loop and the engine thread.

The event loop reserves places and queues requests here (:meth:`AdmissionQueue.reserve`,
:meth:`AdmissionQueue.push`) and withdraws cancelled ones; the engine thread takes the
requests it can run this step (:meth:`AdmissionQueue.select`). One lock guards the queue,
so the two sides meet only here; the running batch, KV blocks and decoding are the
scheduler's (:mod:`loraswap.service.engine.scheduler`), touched by the engine thread alone.

Fairness: see :class:`FairQueue` (round-robin across tenants, FIFO within one; places
reserved before tokenizing; a full queue makes room for a caller holding less).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from loraswap.service.engine.classify import ClassificationStream, PendingClassification
from loraswap.service.engine.fair_queue import FairQueue, QueuePlaces
from loraswap.service.engine.requests import RequestStream
from loraswap.service.engine.sequences import GenerationSequence, SchedulerConfig
from loraswap.service.errors import NotReadyError, OverloadedError

# What waits in the queue: a generation sequence or a classification request.
Queued = GenerationSequence | PendingClassification


@dataclass
class Selection:
    """What one step takes from the queue: generations (each with KV blocks),
    classifications (none), and cancelled requests found on the way (to be ended)."""

    generations: list[GenerationSequence] = field(default_factory=list)
    classifications: list[PendingClassification] = field(default_factory=list)
    cancelled: list[Queued] = field(default_factory=list)


class AdmissionQueue:
    """The waiting requests of every caller; thread-safe."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self._waiting: FairQueue[Queued] = FairQueue(lambda item: item.request.fairness_key)
        # Classifications in the queue: with the batch full, only they can be admitted.
        self._classify_waiting = 0
        self._lock = threading.Lock()
        self._closed = False
        self._queued: dict[int, Queued] = {}  # id(stream) -> its waiting item

    @property
    def size(self) -> int:
        """Requests queued, not yet running."""
        return self._waiting.size

    def adapter_names(self) -> list[str]:
        """Adapter names (no versions, no base) of the waiting requests."""
        with self._lock:
            return [str(item.request.adapter.ref) for item in self._waiting.items()
                    if item.request.adapter is not None]

    def reserve(self, key: str, places: int) -> QueuePlaces:
        """Hold ``places`` of ``key``'s share for its next engine requests, before they are
        tokenized: a caller over its share, or a full queue that no heavier caller can make
        room in, is refused (:class:`OverloadedError`) before any work is spent on it."""
        with self._lock:
            self._make_room(key, places, check_share=True, dry_run=True)
            self._waiting.reserve(key, places)
        return QueuePlaces(key, places, self._unreserve)

    def _unreserve(self, key: str, places: int) -> None:
        with self._lock:
            self._waiting.unreserve(key, places)

    def push(self, item: Queued, places: QueuePlaces | None) -> list[Queued]:
        """Queue ``item`` (in one of ``places``, if any are left); the requests pushed out
        of a full queue to make room, for the caller to end with a 429."""
        key = item.request.fairness_key
        reserved = places is not None and places.key == key and places.take()
        with self._lock:
            if reserved:
                self._waiting.unreserve(key, 1)  # its share was checked at the reservation
            pushed_out = self._make_room(key, 1, check_share=not reserved)
            self._waiting.push(item)
            self._queued[id(item.stream)] = item
            self._classify_waiting += isinstance(item, PendingClassification)
        return pushed_out

    def _make_room(self, key: str, places: int, *, check_share: bool,
                   dry_run: bool = False) -> list[Queued]:
        """Check that ``places`` more items of ``key`` fit (its share, the queue) and make
        room in a full queue (:meth:`FairQueue.room_for`); the items pushed out (none on a
        dry run). Called with the lock held."""
        if self._closed:
            raise NotReadyError("server is shutting down")
        full = self._waiting.size + places > self.config.max_queue
        held = self._waiting.held(key)
        share = self.config.queue_share
        if check_share and held + places > share:
            # A share that is the whole queue is not worth naming.
            raise self.queue_full() if full or share >= self.config.max_queue else OverloadedError(
                f"this caller already has {held} requests queued, its share of the queue is "
                f"{share}; retry later", retry_after=1)
        victims = self._waiting.room_for(key, places, self.config.max_queue)
        if victims is None:
            raise self.queue_full()
        if dry_run:
            return []
        pushed_out = self._waiting.push_out(victims)
        for item in pushed_out:
            self._queued.pop(id(item.stream), None)
            self._classify_waiting -= isinstance(item, PendingClassification)
        return pushed_out

    def queue_full(self) -> OverloadedError:
        """The 429 of a full queue."""
        return OverloadedError(
            f"request queue is full ({self.config.max_queue} waiting); retry later",
            retry_after=1)

    def withdraw(self, stream: RequestStream | ClassificationStream) -> Queued | None:
        """Take the waiting request of ``stream`` out of the queue (None: not waiting)."""
        with self._lock:
            item = self._queued.pop(id(stream), None)
            if item is None or not self._waiting.remove(item):
                return None
            self._classify_waiting -= isinstance(item, PendingClassification)
        return item

    def select(self, room: int, budget: int, take_slot: Callable[[Queued], bool],
               start: Callable[[GenerationSequence, int], bool]) -> Selection:
        """Waiting requests to run this step, in fairness order: up to ``room``
        generations, each started with a first prompt chunk of the ``budget`` left (at
        least one token), and classifications, each within the budget (the first one
        always fits); ``take_slot`` gives an item its adapter's slot, False while none is
        free (the item waits, other callers go on); ``start`` gives a generation its KV
        blocks (sets ``chunk``), False while the pool lacks them: it then keeps its turn
        and nothing else starts this step."""
        chosen = Selection()
        with self._lock:
            progress = True
            while progress and self._waiting.size and (room or self._classify_waiting):
                progress = False
                for key in self._waiting.keys_in_turn():
                    if not (room or self._classify_waiting):
                        break
                    item = self._waiting.peek(key)
                    if item.stream.cancelled:
                        chosen.cancelled.append(self._pop(key))
                        continue
                    is_generation = isinstance(item, GenerationSequence)
                    if is_generation and not room:
                        continue  # waits for room; classifications of other keys go on
                    need = 1 if is_generation else len(item.request.prompt_ids)
                    first = not (chosen.generations or chosen.classifications or is_generation)
                    if not first and need > budget:
                        return chosen
                    if not take_slot(item):
                        continue  # its adapter waits for a slot; other keys go on
                    if isinstance(item, GenerationSequence):
                        if not start(item, budget):
                            return chosen
                        budget -= item.chunk
                        room -= 1
                        chosen.generations.append(item)
                    else:
                        budget -= need
                        chosen.classifications.append(item)
                    self._pop(key)
                    progress = True
        return chosen

    def _pop(self, key: str) -> Queued:
        item = self._waiting.pop(key)
        self._queued.pop(id(item.stream), None)
        self._classify_waiting -= isinstance(item, PendingClassification)
        return item

    def close(self) -> list[Queued]:
        """Refuse every new request from now on; the requests that were waiting."""
        with self._lock:
            self._closed = True
            pending = self._waiting.drain()
            self._queued.clear()
            self._classify_waiting = 0
        return pending
