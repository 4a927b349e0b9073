"""Keeps one replica in step with the shared registry: pins and per-tenant gauges.

Active versions need no watcher (each request resolves through the registry's short-lived
cache, with a lookup on a miss). Pins do: a pin set through another replica must make this
replica load the adapter too, and a promotion must move the pin to the new version. The
watcher reads the registry every ``interval`` seconds, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging

from loraswap.adapters.registry import AdapterRecord, AdapterRegistry
from loraswap.core.errors import LoraswapError
from loraswap.core.identity import AdapterRef, AdapterVersionRef
from loraswap.service.adapter_source import AdapterResolver
from loraswap.service.engine.engine import LoraEngine
from loraswap.service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)


class RegistryWatcher:
    """Applies registry pins to the engine and exports registered adapters per tenant."""

    def __init__(self, registry: AdapterRegistry, resolver: AdapterResolver, engine: LoraEngine,
                 metrics: ServiceMetrics, interval: float) -> None:
        self.registry = registry
        self.resolver = resolver
        self.engine = engine
        self.metrics = metrics
        self.interval = interval
        self._pinned: dict[AdapterRef, AdapterVersionRef] = {}  # what this replica pinned
        self._wanted: dict[AdapterRef, AdapterVersionRef] = {}  # what the registry pins
        self.synced = False  # a whole round succeeded at least once

    def pins_pending(self) -> list[str]:
        """Pinned adapters (``tenant/name``) whose pinned version is not in a slot yet.

        Readiness waits for this to be empty (and for a first successful round): a pod
        started after a pin must not take traffic before the pinned adapter is resident.
        """
        resident = set(self.engine.residency().in_slots)
        return sorted(str(ref) for ref, key in self._wanted.items() if key not in resident)

    async def run(self) -> None:
        """Sync forever (cancel the task to stop); a failed round is logged and retried."""
        while True:
            try:
                await self.sync()
            except LoraswapError as exc:
                logger.warning("registry sync failed (retrying in %.0f s): %s",
                               self.interval, exc)
            await asyncio.sleep(self.interval)

    async def sync(self) -> None:
        """One round: gauges, then pins to match the registry."""
        records = await asyncio.to_thread(self.registry.list)
        counts: dict[str, int] = {}
        for record in records:
            counts[record.tenant] = counts.get(record.tenant, 0) + 1
        self.metrics.registered_adapters(counts)
        wanted = {r.ref: r for r in records if r.pinned and r.active}
        self._wanted = {ref: key for ref, r in wanted.items()
                        if (key := r.active_key) is not None}
        for ref in list(self._pinned):
            if ref not in wanted:
                await self.engine.unpin(ref)
                del self._pinned[ref]
                logger.info("unpinned %s", ref)
        for ref, record in wanted.items():
            if self._pinned.get(ref) != record.active_key:
                await self.apply_pin(record)
        self.synced = True

    async def apply_pin(self, record: AdapterRecord) -> None:
        """Pin the active version of ``record`` and load it into a slot."""
        ref = record.ref
        if not record.pinned or record.active is None:
            if self._pinned.pop(ref, None) is not None:
                await self.engine.unpin(ref)
            return
        target = await asyncio.to_thread(self.resolver.resolve, str(ref))
        assert target.key is not None and target.read is not None  # a registry adapter
        weights = await self.engine.adapter_weights(target.key, target.read)
        loaded = await self.engine.pin(target.key, weights)
        if loaded:  # else every slot was busy: the next round tries again
            self._pinned[ref] = target.key
        logger.info("pinned %s%s", target.key,
                    "" if loaded else " (every slot busy: tried again next round)")
