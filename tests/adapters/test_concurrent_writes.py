"""Concurrent writers of tenant records and ``state.json`` (issue 13, item 9): every
read-modify-write is a compare-and-swap, so no update is lost, a deleted tenant stays
deleted and the active pointer never lands on a deleted version; on both stores, with
threads and with two processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import ObjectStore
from loraswap.adapters.validation import ValidationLimits
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import AdapterNotFoundError, ConflictError, NotFoundError
from loraswap.tenants.directory import TENANTS_PREFIX, TenantDirectory, TenantPolicy, TenantRecord
from tests.adapters.cas_worker import CommitLog, SlowReadsStore
from tests.adapters.conftest import PackageBuilder

ROOT = Path(__file__).resolve().parents[2]


def _together(actions: list[Callable[[], object]]) -> list[object]:
    """Run the actions on threads released at once; their results (or exceptions)."""
    barrier = threading.Barrier(len(actions))
    results: list[object] = [None] * len(actions)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = actions[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def _replica(store: ObjectStore, commits: CommitLog | None = None) -> TenantDirectory:
    return TenantDirectory(SlowReadsStore(store, commits=commits),  # type: ignore[arg-type]
                           refresh_seconds=0.0)


def test_policy_changes_and_key_rotations_lose_nothing(store: ObjectStore) -> None:
    """Eight changes of one record from eight replicas at once. Beyond "the last key
    works", the writes that landed, in store order, must each change exactly one field of
    the record before them (a write from a stale read reverts the other field too) and
    every policy asked for must have landed (a dropped write is never seen)."""
    _, original = TenantDirectory(store).create("acme")
    key = f"{TENANTS_PREFIX}acme.json"
    commits = CommitLog()
    rotations = [lambda: _replica(store, commits).rotate_key("acme") for _ in range(4)]
    policies = [lambda i=i: _replica(store, commits).update_policy(  # type: ignore[misc]
        "acme", TenantPolicy(max_concurrent=i + 1)) for i in range(4)]
    before = TenantRecord.model_validate_json(store.get(key))
    results = _together([*rotations, *policies])
    assert not [r for r in results if isinstance(r, Exception)], results
    new_keys = [str(r) for r in results[:4]]
    reader = TenantDirectory(store, refresh_seconds=0.0)
    assert reader.authenticate(original) is None, "a revoked key works again"
    working = [k for k in new_keys if reader.authenticate(k) is not None]
    assert len(working) == 1, "exactly the last rotated key works"
    landed = [TenantRecord.model_validate_json(data) for k, data in commits.writes if k == key]
    assert len(landed) == 8, "one landed write per change"
    for previous, record in zip([before, *landed], landed, strict=False):
        changed = {field for field in ("key_digests", "policy")
                   if getattr(previous, field) != getattr(record, field)}
        assert len(changed) == 1, f"a write undid another change: {previous} -> {record}"
    assert {r.policy.max_concurrent for r in landed} >= {1, 2, 3, 4}, "a policy was lost"
    assert reader.get("acme") == landed[-1]


def test_a_deleted_tenant_is_not_resurrected_by_a_rotation(store: ObjectStore) -> None:
    for round_ in range(3):
        name = f"gone{round_}"
        TenantDirectory(store).create(name)
        results = _together([lambda: _replica(store).delete(name),  # noqa: B023
                             lambda: _replica(store).rotate_key(name)])  # noqa: B023
        assert results[0] is None, results
        assert results[1] is None or isinstance(results[1], (str, NotFoundError)), results
        with pytest.raises(NotFoundError):
            TenantDirectory(store).get(name)


def test_promote_never_lands_on_a_version_deleted_at_the_same_time(
        store: ObjectStore, base_fingerprint: BaseModelFingerprint,
        build_package: PackageBuilder, tmp_path: Path) -> None:
    def registry(cache: str) -> AdapterRegistry:
        return AdapterRegistry(SlowReadsStore(store), base_fingerprint,  # type: ignore[arg-type]
                               ValidationLimits(), tmp_path / cache, refresh_seconds=0.0)

    writer = registry("cache0")
    for round_ in range(3):
        name = f"chat{round_}"
        writer.register("acme", name, build_package(f"a{round_}", seed=1))
        writer.register("acme", name, build_package(f"b{round_}", seed=2))
        results = _together([lambda: registry("cache1").promote("acme", name, 2),  # noqa: B023
                             lambda: registry("cache2").delete_version("acme", name, 2)])  # noqa: B023
        for result in results:
            assert result is None or not isinstance(result, Exception) or isinstance(
                result, (AdapterNotFoundError, ConflictError)), results
        record = registry("cache3").get("acme", name)
        existing = {v.version for v in record.versions}
        assert record.active in existing, f"active {record.active} not in {existing}"


@pytest.mark.integration  # two worker processes
def test_two_processes_changing_one_tenant_lose_nothing(store: ObjectStore) -> None:
    TenantDirectory(store).create("acme")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    count = 12
    workers = [subprocess.Popen(
        [sys.executable, "-m", "tests.adapters.cas_worker", store.uri, "acme", action,
         str(count)], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True) for action in ("rotate", "policy")]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    keys = outputs[0].split()
    assert len(keys) == count
    reader = TenantDirectory(store, refresh_seconds=0.0)
    record = reader.get("acme")
    assert record.policy == TenantPolicy(max_concurrent=count), "a policy change was lost"
    assert reader.authenticate(keys[-1]) is not None, "the last rotated key was lost"
    assert all(reader.authenticate(key) is None for key in keys[:-1]), "a revoked key works"
