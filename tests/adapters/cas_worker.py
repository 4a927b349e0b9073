"""Helpers for the concurrent-writer tests: a store that widens read-modify-write windows,
and a worker process that changes one tenant many times (``python -m
tests.adapters.cas_worker STORE_URI TENANT rotate|policy COUNT``)."""

from __future__ import annotations

import sys
import threading
import time

from loraswap.adapters.store import ObjectStore, open_store
from loraswap.tenants.directory import TenantDirectory, TenantPolicy

READ_DELAY_S = 0.02


class CommitLog:
    """Every write that landed, in the order the store took them (the writes of all the
    replicas sharing it are serialized through one lock; their reads stay concurrent)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.writes: list[tuple[str, bytes]] = []


class SlowReadsStore:
    """Delegates to a store, pausing after every read: a read-modify-write that is not a
    compare-and-swap then loses updates reliably instead of once in a while. With
    ``commits``, every successful write is recorded in store order."""

    def __init__(self, inner: ObjectStore, delay: float = READ_DELAY_S,
                 commits: CommitLog | None = None) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.delay = delay
        self.commits = commits

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def get(self, key: str) -> bytes:
        data = self.inner.get(key)
        time.sleep(self.delay)
        return data

    def put(self, key: str, data: bytes) -> None:
        if self.commits is None:
            self.inner.put(key, data)
            return
        with self.commits.lock:
            self.inner.put(key, data)
            self.commits.writes.append((key, data))

    def put_if_match(self, key: str, data: bytes, expected: str | None) -> bool:
        if self.commits is None:
            return self.inner.put_if_match(key, data, expected)  # type: ignore[attr-defined, no-any-return]
        with self.commits.lock:
            done: bool = self.inner.put_if_match(key, data, expected)  # type: ignore[attr-defined]
            if done:
                self.commits.writes.append((key, data))
            return done

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        found: tuple[bytes, str] = self.inner.get_versioned(key)  # type: ignore[attr-defined]
        time.sleep(self.delay)
        return found


def main(argv: list[str]) -> int:
    """Rotate the tenant's key (printing each new key) or raise its max_concurrent 1..COUNT."""
    uri, tenant, action, count = argv[0], argv[1], argv[2], int(argv[3])
    tenants = TenantDirectory(SlowReadsStore(open_store(uri)))  # type: ignore[arg-type]
    print("ready", flush=True)
    sys.stdin.readline()  # both workers start together
    for step in range(1, count + 1):
        if action == "rotate":
            print(tenants.rotate_key(tenant), flush=True)
        else:
            tenants.update_policy(tenant, TenantPolicy(max_concurrent=step))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
