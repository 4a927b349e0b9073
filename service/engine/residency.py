"""Resident-adapter tiers: engine slots and a host-memory LRU, both with evict callbacks.

Tier 1, :class:`LoraSlotManager`: adapters copied into the slot table. Only the engine
thread touches it. A slot used by a running sequence is referenced and never evicted;
a pinned adapter is never evicted either. Tier 2, :class:`HostLoraCache`: decoded
adapters in host memory, so that a slot miss costs a copy, not a disk read. Loads of the
same adapter by concurrent requests are coalesced into one.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from loraswap.adapters.lora_format import LoraAdapterWeights
from loraswap.core.identity import AdapterRef, AdapterVersionRef
from loraswap.service.engine.lora_slots import LoraSlotTable
from loraswap.service.engine.observer import EngineObserver


class LoraSlotManager:
    """Maps adapters to slots of a :class:`LoraSlotTable`, least recently used first out."""

    def __init__(self, table: LoraSlotTable, observer: EngineObserver) -> None:
        self.table = table
        self._observer = observer
        # LRU order, oldest first
        self._slot_of: OrderedDict[AdapterVersionRef, int] = OrderedDict()
        self._refs = [0] * (table.max_loras + 1)
        self._free = list(range(table.max_loras, 0, -1))
        # One pinned version per adapter name: promoting re-pins, so an old version is not
        # kept resident for ever.
        self.pinned: set[AdapterVersionRef] = set()
        # Replaced (never mutated) on the engine thread whenever the slots' contents change,
        # so probes, scrapes and the registry watcher can read it from any thread.
        self._resident: tuple[AdapterVersionRef, ...] = ()

    @property
    def resident(self) -> tuple[AdapterVersionRef, ...]:
        """Adapters now in slots (a snapshot, safe to read from any thread)."""
        return self._resident

    def acquire(self, key: AdapterVersionRef, weights: LoraAdapterWeights) -> int | None:
        """Slot holding ``key`` (loading it if needed), referenced; None if all are busy."""
        slot = self._slot_of.get(key)
        if slot is not None:
            self._slot_of.move_to_end(key)
            self._observer.adapter_lookup("slot", hit=True)
        else:
            self._observer.adapter_lookup("slot", hit=False)
            slot = self._free.pop() if self._free else self._evict_one()
            if slot is None:
                return None
            started = time.perf_counter()
            self.table.load(slot, weights)
            self._observer.adapter_loaded(str(key.ref), "slot", time.perf_counter() - started)
            self._slot_of[key] = slot
            self._resident = tuple(self._slot_of)
        self._refs[slot] += 1
        self._observer.resident_adapters("slot", len(self._slot_of))
        return slot

    def pin(self, key: AdapterVersionRef) -> None:
        """Never evict ``key``; unpins other versions of the same adapter."""
        self.pinned = {k for k in self.pinned if k.ref != key.ref} | {key}

    def unpin(self, ref: AdapterRef) -> None:
        """Let every version of adapter ``ref`` be evicted again."""
        self.pinned = {k for k in self.pinned if k.ref != ref}

    def release(self, slot: int) -> None:
        """Drop one running sequence's reference to ``slot``."""
        if slot:
            self._refs[slot] -= 1

    def _evict_one(self) -> int | None:
        for key, slot in self._slot_of.items():
            if self._refs[slot] == 0 and key not in self.pinned:
                del self._slot_of[key]
                self._resident = tuple(self._slot_of)
                self.table.clear(slot)
                self._observer.adapter_evicted(str(key.ref), "slot")
                return slot
        return None


class HostLoraCache:
    """Decoded adapters in host memory (LRU), with one load in flight per adapter."""

    def __init__(
        self, capacity: int, observer: EngineObserver,
        run_blocking: Callable[[Callable[[], LoraAdapterWeights]], Awaitable[LoraAdapterWeights]],
    ) -> None:
        """``run_blocking`` runs a (torch-using) read off the event loop: the engine thread."""
        self.capacity = capacity
        self._observer = observer
        self._run_blocking = run_blocking
        self._entries: OrderedDict[AdapterVersionRef, LoraAdapterWeights] = OrderedDict()
        self._loading: dict[AdapterVersionRef, asyncio.Future[LoraAdapterWeights]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[AdapterVersionRef]:
        """Adapters now decoded in host memory, least recently used first."""
        return list(self._entries)

    async def get(
        self, key: AdapterVersionRef, load: Callable[[], LoraAdapterWeights]
    ) -> LoraAdapterWeights:
        """The decoded adapter; ``load`` (blocking, run off the loop) only on a miss."""
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self._observer.adapter_lookup("host", hit=True)
            return cached
        self._observer.adapter_lookup("host", hit=False)
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[LoraAdapterWeights] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            started = time.perf_counter()
            weights = await self._run_blocking(load)
            self._observer.adapter_loaded(str(key.ref), "host", time.perf_counter() - started)
        except BaseException as exc:
            future.set_exception(exc)
            # Waiters re-raise it; mark it retrieved so asyncio does not warn when none wait.
            future.exception()
            raise
        finally:
            del self._loading[key]
        future.set_result(weights)
        self._insert(key, weights)
        return weights

    def _insert(self, key: AdapterVersionRef, weights: LoraAdapterWeights) -> None:
        self._entries[key] = weights
        while len(self._entries) > self.capacity:
            old, _ = self._entries.popitem(last=False)
            self._observer.adapter_evicted(str(old.ref), "host")
        self._observer.resident_adapters("host", len(self._entries))
