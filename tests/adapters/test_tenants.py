"""Tenants and API keys on a folder and on a real S3 server."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from loraswap.adapters.store import FileSystemStore, ObjectStore, ObservedStore
from loraswap.core.errors import ConflictError, InvalidRequestError, NotFoundError
from loraswap.tenants.directory import TenantDirectory, TenantPolicy, parse_policy
from tests.utils.clock import FakeClock

pytestmark = pytest.mark.integration  # the "s3" parameter runs a real SeaweedFS process


@pytest.fixture
def directory(store: ObjectStore) -> TenantDirectory:
    return TenantDirectory(store, refresh_seconds=2.0, clock=FakeClock(50.0))


def test_create_authenticate_and_store_only_digests(directory: TenantDirectory) -> None:
    record, key = directory.create("acme", TenantPolicy(requests_per_second=5.0))
    assert key.startswith("lsk_") and len(key) == 4 + 43
    assert record.name == "acme" and record.policy.requests_per_second == 5.0
    found = directory.authenticate(key)
    assert found is not None and found.name == "acme"
    assert directory.authenticate(key + "x") is None
    assert directory.authenticate("lsk_" + "A" * 43) is None
    assert directory.authenticate("") is None
    stored = directory.store.get("tenants/acme.json")
    assert key.encode() not in stored
    assert hashlib.sha256(key.encode()).hexdigest().encode() in stored
    assert [t.name for t in directory.list()] == ["acme"]
    assert directory.get("acme").key_digests == record.key_digests


def test_create_refuses_duplicates_and_bad_names(directory: TenantDirectory) -> None:
    directory.create("acme")
    with pytest.raises(ConflictError, match="tenant 'acme' already exists"):
        directory.create("acme")
    for bad in ["Acme", "../x", "a/b", "", "-x", "x" * 64]:
        with pytest.raises(InvalidRequestError, match="tenant name"):
            directory.create(bad)
    with pytest.raises(NotFoundError, match="tenant 'nobody' not found"):
        directory.get("nobody")
    with pytest.raises(NotFoundError):
        directory.get("../acme")


def test_rotate_replaces_every_old_key(directory: TenantDirectory) -> None:
    _, old = directory.create("acme")
    assert directory.authenticate(old) is not None
    new = directory.rotate_key("acme")
    assert new != old
    assert directory.authenticate(old) is None
    found = directory.authenticate(new)
    assert found is not None and found.name == "acme" and len(found.key_digests) == 1


def test_delete_drops_the_tenant_and_its_keys(directory: TenantDirectory) -> None:
    _, key = directory.create("acme")
    _, other = directory.create("zeta")
    directory.authenticate(key)
    directory.delete("acme")
    assert directory.authenticate(key) is None
    assert directory.authenticate(other) is not None
    assert [t.name for t in directory.list()] == ["zeta"]
    with pytest.raises(NotFoundError):
        directory.delete("acme")
    _, again = directory.create("acme")  # the name can be reused, with a new key
    assert directory.authenticate(key) is None and directory.authenticate(again) is not None


def test_update_policy_and_policy_errors_name_the_field(directory: TenantDirectory) -> None:
    directory.create("acme")
    updated = directory.update_policy("acme", TenantPolicy(allow_base_model=False,
                                                           max_concurrent=2))
    assert directory.get("acme").policy == updated.policy
    assert not updated.policy.allow_base_model and updated.policy.max_concurrent == 2
    with pytest.raises(InvalidRequestError, match="requests_per_second"):
        parse_policy({"requests_per_second": -1})
    with pytest.raises(InvalidRequestError, match="max_concurrent"):
        parse_policy({"max_concurrent": 0})
    with pytest.raises(InvalidRequestError, match="surprise"):
        parse_policy({"surprise": True})
    with pytest.raises(NotFoundError):
        directory.update_policy("nobody", TenantPolicy())


def test_replicas_see_new_keys_at_once_and_revocations_within_refresh(
    store: ObjectStore,
) -> None:
    clock = FakeClock()
    a = TenantDirectory(store, refresh_seconds=2.0, clock=clock)
    b = TenantDirectory(store, refresh_seconds=2.0, clock=clock)
    _, first = a.create("acme")
    assert b.authenticate(first) is not None  # b loads its index
    _, second = a.create("zeta")
    found = b.authenticate(second)  # a miss re-reads at once
    assert found is not None and found.name == "zeta"
    new = a.rotate_key("acme")
    assert a.authenticate(first) is None  # at once on the replica that rotated
    assert b.authenticate(first) is not None  # b's cached index is still fresh
    clock.now += 2.0
    assert b.authenticate(first) is None
    assert b.authenticate(new) is not None


def test_every_digest_is_compared_in_constant_time(
    directory: TenantDirectory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [directory.create(name)[1] for name in ("alpha", "beta", "gamma")]
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what tenants.directory calls
    for key in keys:  # the first key matches the first digest: still all are compared
        calls.clear()
        assert directory.authenticate(key) is not None
        assert len(calls) == 3
        assert {a for a, _ in calls} == {t.key_digests[0].sha256 for t in directory.list()}
    assert all(b == hashlib.sha256(keys[-1].encode()).hexdigest() for _, b in calls)


def test_bad_keys_do_not_hammer_the_store(tmp_path: Path) -> None:
    operations: list[str] = []

    class Recorder:
        def observe_store(self, operation: str, seconds: float, ok: bool) -> None:
            operations.append(operation)

    clock = FakeClock()
    store = ObservedStore(FileSystemStore(tmp_path / "store"), Recorder())
    directory = TenantDirectory(store, refresh_seconds=2.0, miss_reload_seconds=0.5, clock=clock)
    _, key = directory.create("acme")
    assert directory.authenticate(key) is not None
    operations.clear()
    for _ in range(50):
        assert directory.authenticate("lsk_" + "B" * 43) is None
    assert operations.count("list") == 1  # one re-read for the first miss, then throttled
    clock.now += 0.6
    directory.authenticate("lsk_" + "C" * 43)
    assert operations.count("list") == 2
    assert directory.authenticate("sk-not-a-tenant-key") is None
    assert operations.count("list") == 2  # not a tenant key format: no store access
