"""The registry on a folder and on a real S3 server: versions, activation, replicas, crashes."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from loraswap.adapters.lora_format import WEIGHTS_FILE
from loraswap.adapters.package import MANIFEST_FILE, package_file_digests
from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import FileSystemStore, ObjectStore
from loraswap.adapters.validation import ValidationLimits
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import (
    AdapterNotFoundError,
    AdapterValidationError,
    ConflictError,
    InvalidRequestError,
    StoreError,
)
from tests.adapters.conftest import PackageBuilder, snapshot
from tests.s3_server import S3Server
from tests.utils.clock import FakeClock

pytestmark = pytest.mark.integration  # the "s3" parameter runs a real SeaweedFS process


def make_registry(store: ObjectStore, base: BaseModelFingerprint, cache: Path,
                  clock: FakeClock | None = None, **kwargs: object) -> AdapterRegistry:
    return AdapterRegistry(store, base, ValidationLimits(), cache, refresh_seconds=2.0,
                           clock=clock or FakeClock(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def registry(store: ObjectStore, base_fingerprint: BaseModelFingerprint,
             tmp_path: Path) -> AdapterRegistry:
    return make_registry(store, base_fingerprint, tmp_path / "cache")


def test_versions_and_activation(registry: AdapterRegistry,
                                 build_package: PackageBuilder) -> None:
    v1 = registry.register("acme", "chat", build_package("a", seed=1))
    v2 = registry.register("acme", "chat", build_package("b", seed=2))
    assert (v1.version, v2.version) == (1, 2)
    assert registry.active("acme", "chat").version == 1  # None: only the first activates
    v3 = registry.register("acme", "chat", build_package("c", seed=3), activate=True)
    assert registry.active("acme", "chat").version == v3.version == 3
    v4 = registry.register("acme", "chat", build_package("d", seed=4), activate=False)
    record = registry.get("acme", "chat")
    assert record.active == 3 and [v.version for v in record.versions] == [1, 2, 3, 4]
    assert v4.manifest.tenant == "acme" and v4.manifest.name == "chat"
    assert v4.manifest.version == 4
    stored = registry.store.get(f"adapters/acme/chat/versions/00000004/{MANIFEST_FILE}")
    assert b'"version": 4' in stored
    assert registry.version("acme", "chat", 2).manifest.files == v2.manifest.files


def test_listing_and_counts(registry: AdapterRegistry, build_package: PackageBuilder) -> None:
    package = build_package()
    registry.register("acme", "chat", package)
    registry.register("acme", "sql", package, activate=False)
    registry.register("zeta", "chat", package)
    assert [(r.tenant, r.name) for r in registry.list()] == [
        ("acme", "chat"), ("acme", "sql"), ("zeta", "chat")]
    assert [r.name for r in registry.list("acme")] == ["chat", "sql"]
    assert registry.list("nobody") == [] and registry.list("../x") == []
    assert registry.tenants_with_adapters() == {"acme": 2, "zeta": 1}
    with pytest.raises(AdapterNotFoundError, match="acme/sql"):
        registry.active("acme", "sql")  # registered, never activated
    for tenant, name in [("acme", "nope"), ("../etc", "x"), ("acme", "a/b")]:
        with pytest.raises(AdapterNotFoundError):
            registry.get(tenant, name)
    with pytest.raises(AdapterNotFoundError, match="acme/chat@9"):
        registry.version("acme", "chat", 9)


def test_promote_and_rollback(registry: AdapterRegistry, build_package: PackageBuilder) -> None:
    for seed in (1, 2, 3):
        registry.register("acme", "chat", build_package(f"p{seed}", seed=seed))
    with pytest.raises(ConflictError, match="no previous version"):
        registry.rollback("acme", "chat")
    assert registry.promote("acme", "chat", 2).active == 2
    assert registry.promote("acme", "chat", 3).active == 3
    assert registry.rollback("acme", "chat").active == 2
    assert registry.active("acme", "chat").version == 2
    assert registry.rollback("acme", "chat").active == 1
    with pytest.raises(ConflictError):
        registry.rollback("acme", "chat")
    with pytest.raises(AdapterNotFoundError):
        registry.promote("acme", "chat", 7)
    assert registry.set_pinned("acme", "chat", True).pinned
    assert registry.promote("acme", "chat", 3).pinned  # the pin survives promotions
    assert not registry.set_pinned("acme", "chat", False).pinned


def test_delete_version_and_adapter(registry: AdapterRegistry,
                                    build_package: PackageBuilder) -> None:
    package = build_package()
    for _ in range(3):
        registry.register("acme", "chat", package)
    registry.promote("acme", "chat", 2)
    with pytest.raises(ConflictError, match="version 2 of acme/chat is active"):
        registry.delete_version("acme", "chat", 2)
    registry.delete_version("acme", "chat", 1)
    assert [v.version for v in registry.get("acme", "chat").versions] == [2, 3]
    assert registry.store.list("adapters/acme/chat/versions/00000001/") == []
    with pytest.raises(ConflictError):  # version 1 was the only rollback target
        registry.rollback("acme", "chat")
    assert registry.register("acme", "chat", package).version == 4  # numbers never reused
    registry.delete_adapter("acme", "chat")
    with pytest.raises(AdapterNotFoundError):
        registry.get("acme", "chat")
    with pytest.raises(AdapterNotFoundError):
        registry.active("acme", "chat")
    assert registry.list() == [] and registry.tenants_with_adapters() == {}
    assert registry.register("acme", "chat", package).version == 5


def test_two_replicas_converge_within_refresh(store: ObjectStore, tmp_path: Path,
                                              base_fingerprint: BaseModelFingerprint,
                                              build_package: PackageBuilder) -> None:
    clock = FakeClock()
    a = make_registry(store, base_fingerprint, tmp_path / "a", clock)
    b = make_registry(store, base_fingerprint, tmp_path / "b", clock)
    a.register("acme", "chat", build_package("one", seed=1))
    assert b.active("acme", "chat").version == 1  # a miss reads the store at once
    a.register("acme", "chat", build_package("two", seed=2), activate=True)
    assert a.active("acme", "chat").version == 2
    assert b.active("acme", "chat").version == 1  # cached, not yet refreshed
    clock.now += 1.9
    assert b.active("acme", "chat").version == 1
    clock.now += 0.2
    assert b.active("acme", "chat").version == 2  # converged within refresh_seconds
    b.rollback("acme", "chat")
    clock.now += 2.0
    assert a.active("acme", "chat").version == 1
    a.delete_adapter("acme", "chat")
    clock.now += 2.0
    with pytest.raises(AdapterNotFoundError):
        b.active("acme", "chat")


def test_cached_state_survives_a_store_outage(tmp_path: Path, build_package: PackageBuilder,
                                              base_fingerprint: BaseModelFingerprint) -> None:
    clock = FakeClock()
    store = FileSystemStore(tmp_path / "store")
    registry = make_registry(store, base_fingerprint, tmp_path / "cache", clock)
    registry.register("acme", "chat", build_package())
    (tmp_path / "store").rename(tmp_path / "gone")
    (tmp_path / "store").write_text("not a folder: every read fails")
    clock.now += 10
    assert registry.active("acme", "chat").version == 1  # stale but served
    with pytest.raises(StoreError):
        registry.active("acme", "other")


def test_concurrent_registrations_get_distinct_versions(
    store: ObjectStore, tmp_path: Path, base_fingerprint: BaseModelFingerprint,
    build_package: PackageBuilder,
) -> None:
    replicas = [make_registry(store, base_fingerprint, tmp_path / f"r{i}") for i in range(2)]
    package = build_package()
    barrier = threading.Barrier(4)
    versions: list[int] = []
    errors: list[BaseException] = []

    def upload(registry: AdapterRegistry) -> None:
        barrier.wait()
        try:
            versions.append(registry.register("acme", "chat", package).version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(replicas[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(versions) == [1, 2, 3, 4]
    assert [v.version for v in replicas[0].get("acme", "chat").versions] == [1, 2, 3, 4]


def test_crashed_upload_is_invisible_and_a_retry_works(
    registry: AdapterRegistry, build_package: PackageBuilder,
) -> None:
    package = build_package()
    # What a replica killed mid-upload leaves: a claimed number and blobs, no manifest.
    assert registry.store.create_exclusive("adapters/acme/chat/claims/00000001", b"{}")
    registry.store.put_file("adapters/acme/chat/versions/00000001/" + WEIGHTS_FILE,
                            package / WEIGHTS_FILE)
    with pytest.raises(AdapterNotFoundError):
        registry.get("acme", "chat")
    with pytest.raises(AdapterNotFoundError):
        registry.version("acme", "chat", 1)
    assert registry.list() == [] and registry.tenants_with_adapters() == {}
    retry = registry.register("acme", "chat", package)
    assert retry.version == 2
    assert registry.active("acme", "chat").version == 2
    assert [v.version for v in registry.get("acme", "chat").versions] == [2]


class FailingManifestStore:
    """Delegates to a store but fails the manifest write once, like a crash before it."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.failed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes) -> None:
        if key.endswith(MANIFEST_FILE) and not self.failed:
            self.failed = True
            raise StoreError(f"{self.uri}: put {key!r} failed: simulated outage")
        self.inner.put(key, data)


def test_failed_manifest_write_leaves_no_version(
    tmp_path: Path, base_fingerprint: BaseModelFingerprint, build_package: PackageBuilder,
) -> None:
    inner = FileSystemStore(tmp_path / "store")
    registry = make_registry(FailingManifestStore(inner), base_fingerprint,  # type: ignore[arg-type]
                             tmp_path / "cache")
    with pytest.raises(StoreError, match="simulated outage"):
        registry.register("acme", "chat", build_package())
    assert registry.list() == []
    assert inner.list("adapters/acme/chat/versions/") == []  # blobs cleaned up
    assert registry.register("acme", "chat", build_package()).version == 2


def test_local_folder_downloads_verifies_and_reuses(
    store: ObjectStore, tmp_path: Path, base_fingerprint: BaseModelFingerprint,
    build_package: PackageBuilder,
) -> None:
    operations: list[str] = []

    class Recorder:
        def observe_store(self, operation: str, seconds: float, ok: bool) -> None:
            operations.append(operation)

    registry = make_registry(store, base_fingerprint, tmp_path / "cache", observer=Recorder())
    package = build_package()
    registry.register("acme", "chat", package)
    folder = registry.local_folder("acme", "chat", 1)
    assert folder == tmp_path / "cache" / "acme" / "chat" / "1"
    assert package_file_digests(folder) == package_file_digests(package)
    assert (folder / MANIFEST_FILE).is_file()
    operations.clear()
    assert registry.local_folder("acme", "chat", 1) == folder
    assert "download" not in operations  # reused
    # A copy that does not match the stored manifest is replaced.
    (folder / MANIFEST_FILE).write_text("{}")
    registry.local_folder("acme", "chat", 1)
    assert "download" in operations
    assert package_file_digests(folder) == package_file_digests(package)
    # A blob changed in the store after registration is refused, not served.
    fresh = make_registry(store, base_fingerprint, tmp_path / "cache2")
    store.put("adapters/acme/chat/versions/00000001/" + WEIGHTS_FILE, b"tampered")
    with pytest.raises(StoreError, match=r"has sha256 \w+, its manifest says"):
        fresh.local_folder("acme", "chat", 1)
    assert not (tmp_path / "cache2" / "acme" / "chat" / "1").exists()


def test_register_from_file_uri(registry: AdapterRegistry, build_package: PackageBuilder,
                                tmp_path: Path) -> None:
    registry.import_roots = (tmp_path,)  # file:// imports read only below the import roots
    package = build_package()
    assert registry.register_from_uri("acme", "chat", package.as_uri()).version == 1
    (package / "profile.json").symlink_to("/etc/hostname")
    before = snapshot(registry.store)
    with pytest.raises(AdapterValidationError, match=r"profile\.json is a link"):
        registry.register_from_uri("acme", "chat", package.as_uri())
    with pytest.raises(InvalidRequestError, match="store URI"):
        registry.register_from_uri("acme", "chat", "ftp://example.com/x")
    with pytest.raises(AdapterValidationError, match="is not a folder"):
        registry.register_from_uri("acme", "chat", (tmp_path / "missing").as_uri())
    assert snapshot(registry.store) == before


def test_register_from_s3_uri(registry: AdapterRegistry, build_package: PackageBuilder,
                              s3_server: S3Server, s3_bucket: str, s3_env: None) -> None:
    package = build_package()
    client = s3_server.client()
    prefix = f"incoming/{uuid.uuid4().hex}"
    for file in package.iterdir():
        client.put_object(Bucket=s3_bucket, Key=f"{prefix}/{file.name}", Body=file.read_bytes())
    version = registry.register_from_uri("acme", "chat", f"s3://{s3_bucket}/{prefix}/")
    assert version.manifest.files == package_file_digests(package)
    client.put_object(Bucket=s3_bucket, Key=f"{prefix}/extra/README.md", Body=b"x")
    with pytest.raises(AdapterValidationError, match="nested folder"):
        registry.register_from_uri("acme", "chat", f"s3://{s3_bucket}/{prefix}")
