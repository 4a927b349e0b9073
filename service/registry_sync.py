"""Keeps one replica in step with the shared registry: pins and per-tenant gauges.

Active versions need no watcher (each request resolves through the registry's short-lived
cache, with a lookup on a miss). Pins do: a pin set through another replica must make this
replica load the adapter too, and a promotion must move the pin to the new version. The
watcher reads the registry every ``interval`` seconds, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging

from adapters.errors import LoraswapError
from adapters.registry import AdapterRecord, AdapterRegistry
from service.adapter_source import AdapterResolver
from service.engine.engine import LoraEngine
from service.metrics import ServiceMetrics

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
        self._pinned: dict[str, str] = {}  # adapter reference -> pinned version

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
        wanted = {f"{r.tenant}/{r.name}": r for r in records if r.pinned and r.active}
        for ref in list(self._pinned):
            if ref not in wanted:
                await self.engine.unpin(ref)
                del self._pinned[ref]
                logger.info("unpinned %s", ref)
        for ref, record in wanted.items():
            if self._pinned.get(ref) != str(record.active):
                await self.apply_pin(ref, record)

    async def apply_pin(self, ref: str, record: AdapterRecord) -> None:
        """Pin the active version of ``record`` and load it into a slot."""
        if not record.pinned or record.active is None:
            if self._pinned.pop(ref, None) is not None:
                await self.engine.unpin(ref)
            return
        target = await asyncio.to_thread(self.resolver.resolve, ref)
        assert target.key is not None and target.read is not None  # a registry adapter
        weights = await self.engine.adapter_weights(target.key, target.read)
        loaded = await self.engine.pin(target.key, weights)
        self._pinned[ref] = target.key.version
        logger.info("pinned %s v%s%s", ref, target.key.version,
                    "" if loaded else " (every slot busy: stays once loaded)")
