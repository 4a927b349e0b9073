"""Readiness rules of one process, without a model: loading, pins, drain."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from loraswap.service.lifecycle import Lifecycle


def fake_state(*, synced: bool, pending: list[str]) -> Any:
    watcher = SimpleNamespace(synced=synced, pins_pending=lambda: pending)
    return SimpleNamespace(status="ready", components=SimpleNamespace(watcher=watcher))


def test_not_ready_until_the_first_registry_round_and_every_pin_is_resident() -> None:
    lifecycle = Lifecycle(drain_seconds=1)
    loading = SimpleNamespace(status="loading", components=None)
    assert lifecycle.readiness(loading).status == "loading"  # type: ignore[arg-type]
    assert lifecycle.readiness(fake_state(synced=False, pending=[])).status == "pinning"
    assert lifecycle.readiness(fake_state(synced=True, pending=["acme/a"])).status == "pinning"
    assert lifecycle.readiness(fake_state(synced=True, pending=[])).ready
    # A pin added later does not take a serving replica out of its Services.
    assert lifecycle.readiness(fake_state(synced=True, pending=["acme/b"])).ready


def test_drain_waits_for_accepted_requests_and_readiness_returns_when_cancelled() -> None:
    lifecycle = Lifecycle(drain_seconds=30)
    ready = fake_state(synced=True, pending=[])

    async def scenario() -> float:
        lifecycle.request_started()
        drain = asyncio.create_task(lifecycle.drain())
        await asyncio.sleep(0.05)
        assert not drain.done() and lifecycle.readiness(ready).status == "draining"
        lifecycle.request_finished()
        return await asyncio.wait_for(drain, timeout=5)

    assert asyncio.run(scenario()) < 5
    lifecycle.cancel_drain()
    assert lifecycle.readiness(ready).ready


def test_drain_gives_up_after_the_drain_time() -> None:
    lifecycle = Lifecycle(drain_seconds=0.1)
    lifecycle.request_started()  # never finishes
    assert 0.1 <= asyncio.run(lifecycle.drain()) < 5
