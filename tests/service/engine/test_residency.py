"""Resident-adapter tiers: LRU eviction, in-use protection, pinning, coalesced loads."""

from __future__ import annotations

import asyncio
import threading

import torch

from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.lora_slots import LoraSlotTable
from loraswap.service.engine.observer import NullObserver
from loraswap.service.engine.residency import HostLoraCache, LoraSlotManager
from tests.service.engine.test_lora_slots import GROUPS, adapter


class CountingObserver(NullObserver):
    def __init__(self) -> None:
        self.evicted: list[tuple[str, str]] = []
        self.loaded: list[tuple[str, str]] = []

    def adapter_evicted(self, adapter: str, tier: str) -> None:  # type: ignore[override]
        self.evicted.append((adapter, tier))

    def adapter_loaded(self, adapter: str, tier: str, seconds: float) -> None:  # type: ignore[override]
        self.loaded.append((adapter, tier))


def manager(slots: int) -> tuple[LoraSlotManager, CountingObserver]:
    observer = CountingObserver()
    table = LoraSlotTable(num_layers=2, groups=GROUPS, max_loras=slots, max_rank=4,
                          dtype=torch.float32, device=torch.device("cpu"))
    return LoraSlotManager(table, observer), observer


WEIGHTS = {n: adapter(n, 2, {"q_proj": (8, 8)}, seed=i) for i, n in enumerate("abcd")}


def key(name: str) -> AdapterVersionRef:
    return AdapterVersionRef.parse(f"{name}@1")


def test_least_recently_used_idle_slot_is_evicted() -> None:
    slots, observer = manager(2)
    slot_a = slots.acquire(key("a"), WEIGHTS["a"])
    slot_b = slots.acquire(key("b"), WEIGHTS["b"])
    assert slot_a is not None and slot_b is not None
    slots.release(slot_a)
    slots.release(slot_b)
    assert slots.acquire(key("a"), WEIGHTS["a"]) == slot_a  # hit, now most recent
    slots.release(slot_a)
    assert slots.acquire(key("c"), WEIGHTS["c"]) == slot_b  # b was least recently used
    assert observer.evicted == [("b", "slot")]
    assert [k.name for k in slots.resident] == ["a", "c"]


def test_slots_in_use_or_pinned_are_never_evicted() -> None:
    slots, observer = manager(2)
    slots.acquire(key("a"), WEIGHTS["a"])  # held by a running sequence
    slot_b = slots.acquire(key("b"), WEIGHTS["b"])
    assert slot_b is not None
    slots.pin(key("b"))
    slots.release(slot_b)
    assert slots.acquire(key("c"), WEIGHTS["c"]) is None  # a busy, b pinned: c waits
    assert observer.evicted == []
    slots.unpin(key("b").ref)
    assert slots.acquire(key("c"), WEIGHTS["c"]) == slot_b


def test_pinning_a_new_version_lets_the_old_one_go() -> None:
    slots, _ = manager(1)
    old, new = AdapterVersionRef.parse("b@1"), AdapterVersionRef.parse("b@2")
    slot = slots.acquire(old, WEIGHTS["b"])
    assert slot is not None
    slots.pin(old)
    slots.release(slot)
    slots.pin(new)  # promoted: the pin moves to the new version
    assert slots.pinned == {new}
    assert slots.acquire(new, WEIGHTS["c"]) == slot  # the old version was evictable


async def test_concurrent_misses_load_an_adapter_once() -> None:
    observer = CountingObserver()
    cache = HostLoraCache(capacity=2, observer=observer, run_blocking=asyncio.to_thread)
    calls = 0
    lock = threading.Lock()

    def slow_read() -> object:
        nonlocal calls
        with lock:
            calls += 1
        # No sleep needed: gather starts all eight lookups before the loader's result can
        # come back to the loop (that takes another loop iteration), so they all overlap.
        return WEIGHTS["a"]

    results = await asyncio.gather(*(cache.get(key("a"), slow_read) for _ in range(8)))  # type: ignore[arg-type]
    assert calls == 1
    assert all(r is WEIGHTS["a"] for r in results)
    for name in "bc":
        await cache.get(key(name), lambda n=name: WEIGHTS[n])  # type: ignore[misc]
    assert len(cache) == 2
    assert observer.evicted == [("a", "host")]
