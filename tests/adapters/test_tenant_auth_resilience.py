"""Key authentication survives a bad store and floods of bad keys (issue 13, item 10):
served from the last good index while the store is down, a corrupt record skipped and
reported, and reloads caused by unknown keys rate-limited without holding up valid keys."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from loraswap.adapters.store import FileSystemStore
from loraswap.core.errors import StoreError
from loraswap.tenants.directory import TenantDirectory


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FlakyStore:
    """A folder store whose listing can fail, block, and is counted."""

    def __init__(self, root: Path) -> None:
        self.inner = FileSystemStore(root)
        self.uri = self.inner.uri
        self.down = False
        self.lists = 0
        self.gate: threading.Event | None = None
        self.listing = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def list(self, prefix: str) -> list[str]:
        self.lists += 1
        self.listing.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.down:
            raise StoreError(f"{self.uri}: list {prefix!r} failed: simulated outage")
        return self.inner.list(prefix)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[FlakyStore, Clock, TenantDirectory, str]:
    store = FlakyStore(tmp_path / "store")
    clock = Clock()
    tenants = TenantDirectory(store, refresh_seconds=2.0, miss_reload_seconds=0.5,  # type: ignore[arg-type]
                              clock=clock)
    _, key = tenants.create("acme")
    assert tenants.authenticate(key) is not None
    return store, clock, tenants, key


def test_keys_work_from_the_last_good_index_while_the_store_is_down(
        setup: tuple[FlakyStore, Clock, TenantDirectory, str]) -> None:
    store, clock, tenants, key = setup
    store.down = True
    clock.now += 10  # the index is stale: a reload is due and fails
    found = tenants.authenticate(key)
    assert found is not None and found.name == "acme"
    assert tenants.authenticate("lsk_" + "x" * 43) is None  # a miss is a miss, not a 503
    failed_lists = store.lists
    assert tenants.authenticate(key) is not None
    assert store.lists == failed_lists, "a failed reload is retried on every request"


def test_a_corrupt_record_is_skipped_and_reported(
        setup: tuple[FlakyStore, Clock, TenantDirectory, str], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    _, clock, tenants, key = setup
    (tmp_path / "store" / "tenants" / "broken.json").write_text("{not json")
    clock.now += 10
    with caplog.at_level(logging.WARNING):
        assert tenants.authenticate(key) is not None
        assert [r.name for r in tenants.list()] == ["acme"]
    assert "tenants/broken.json" in caplog.text
    assert tenants.unreadable_records() == ("tenants/broken.json",)


def test_unknown_keys_reload_at_most_once_per_interval_and_never_block_valid_keys(
        setup: tuple[FlakyStore, Clock, TenantDirectory, str]) -> None:
    store, clock, tenants, key = setup
    before = store.lists
    for index in range(200):
        assert tenants.authenticate(f"lsk_bad{index:040d}") is None
    assert store.lists - before == 1, "unknown keys reload more than once per interval"

    # A slow miss reload is under way; a valid key, even with a stale index, is answered
    # at once from the index in hand instead of waiting for it.
    store.gate = threading.Event()
    store.listing.clear()
    clock.now += 10
    slow_miss = threading.Thread(target=tenants.authenticate, args=("lsk_" + "y" * 43,))
    slow_miss.start()
    assert store.listing.wait(timeout=30)
    answered: list[object] = []
    valid = threading.Thread(target=lambda: answered.append(tenants.authenticate(key)))
    valid.start()
    valid.join(timeout=5)
    blocked = valid.is_alive()
    store.gate.set()
    slow_miss.join(timeout=30)
    valid.join(timeout=30)
    assert not blocked, "a valid key waited for a reload caused by an unknown key"
    assert answered and answered[0] is not None
