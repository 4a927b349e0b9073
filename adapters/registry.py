"""The adapter registry: versioned adapter packages per tenant in an object store.

Object layout (documented in ``docs/adapter-format.md``)::

    adapters/{tenant}/{name}/claims/{v:08d}                   version number taken (never reused)
    adapters/{tenant}/{name}/versions/{v:08d}/{package files}  uploaded first
    adapters/{tenant}/{name}/versions/{v:08d}/loraswap.json    written last: the version exists
    adapters/{tenant}/{name}/state.json                        {"active", "previous", "pinned"}

Numbers are claimed with ``create_exclusive``, so replicas never share one; a crashed
upload leaves blobs without a manifest (invisible) and a retry takes the next number.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loraswap.adapters.package import (
    MANIFEST_FILE,
    AdapterManifest,
    check_safe_name,
    parse_manifest,
)
from loraswap.adapters.staging import download_verified, is_complete_copy, stage_from_uri
from loraswap.adapters.store import ObjectStore, ObservedStore, StoreObserver, update_object
from loraswap.adapters.store.base import StoreKeyMissing
from loraswap.adapters.validation import ManifestDefaults, ValidationLimits, validate_package
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import (
    AdapterNotFoundError,
    ConflictError,
    StoreError,
)
from loraswap.core.identity import SAFE_NAME, AdapterRef, AdapterVersionRef, Version

logger = logging.getLogger(__name__)

ROOT = "adapters/"
STATE_FILE = "state.json"
HISTORY_LIMIT = 20
_MAX_CLAIM_ATTEMPTS = 1000
_MANIFEST_KEY = re.compile(
    r"^adapters/(?P<tenant>[^/]+)/(?P<name>[^/]+)/versions/(?P<v>\d{8})/loraswap\.json$"
)
_NUMBERED_KEY = re.compile(r"/(?:claims|versions)/(?P<v>\d{8})(?:/|$)")


def check_version_number(version: int) -> int:
    """``version`` if it can name a version (1 to 99,999,999); else a 400 naming it."""
    return Version.of(version).number


def adapter_prefix(tenant: str, name: str) -> str:
    """Prefix of every object of one adapter."""
    return f"{ROOT}{tenant}/{name}/"


def version_prefix(tenant: str, name: str, version: int) -> str:
    """Prefix of the files of one version."""
    return f"{adapter_prefix(tenant, name)}versions/{version:08d}/"


@dataclass(frozen=True)
class AdapterVersion:
    """One registered, immutable version of an adapter."""

    tenant: str
    name: str
    version: int
    manifest: AdapterManifest

    @property
    def key(self) -> AdapterVersionRef:
        """This version's identity, as every layer above the store spells it."""
        return AdapterRef(self.tenant, self.name).at(Version.of(self.version))


@dataclass(frozen=True)
class AdapterRecord:
    """An adapter, its active version, whether it is pinned, and all its versions."""

    tenant: str
    name: str
    active: int | None
    pinned: bool
    versions: tuple[AdapterVersion, ...]

    @property
    def ref(self) -> AdapterRef:
        """The adapter's identity (``tenant/name``)."""
        return AdapterRef(self.tenant, self.name)

    @property
    def active_key(self) -> AdapterVersionRef | None:
        """The active version's identity (None: no version is active)."""
        return None if self.active is None else self.ref.at(Version.of(self.active))


class AdapterState(BaseModel):
    """``state.json``: which version serves, the activation history and the pin flag."""

    model_config = ConfigDict(extra="forbid")

    active: int | None = Field(default=None, ge=1)
    previous: list[int] = Field(default_factory=list)
    pinned: bool = False
    # Versions deleted (or being deleted): written, as a compare-and-swap, before their
    # files are removed, so that a promotion racing the deletion on another replica either
    # loses its swap or sees the mark, and never activates a deleted version.
    deleted: list[int] = Field(default_factory=list)


def _activated(state: AdapterState, version: int) -> AdapterState:
    """``state`` with ``version`` active and the previously active one in the history."""
    if state.active == version:
        return state
    previous = [*state.previous, state.active] if state.active is not None else state.previous
    return state.model_copy(update={"active": version, "previous": previous[-HISTORY_LIMIT:]})


def _lookup_name(tenant: str, name: str) -> str:
    """``tenant/name`` for messages; names that cannot exist are simply not found."""
    label = f"{tenant}/{name}"
    if not (SAFE_NAME.fullmatch(tenant) and SAFE_NAME.fullmatch(name)):
        raise AdapterNotFoundError(label)
    return label


class AdapterRegistry:
    """Registers, versions, activates and serves adapter packages stored in an object store.

    Synchronous and thread-safe; mutations from this instance are serialised, mutations
    from other replicas become visible within ``refresh_seconds`` (immediately for a
    lookup that misses the cache). ``state.json`` updates are compare-and-swaps.
    """

    def __init__(
        self,
        store: ObjectStore,
        base: BaseModelFingerprint,
        limits: ValidationLimits,
        cache_dir: Path,
        *,
        refresh_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        observer: StoreObserver | None = None,
        import_roots: Sequence[Path] = (),
    ) -> None:
        self.store: ObjectStore = ObservedStore(store, observer) if observer else store
        self.base = base
        self.limits = limits
        self.cache_dir = cache_dir
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.import_roots = tuple(import_roots)
        self._lock = threading.Lock()
        self._write_lock = threading.RLock()
        # (tenant, name) -> (state or None when absent, when it was read)
        self._states: dict[tuple[str, str], tuple[AdapterState | None, float]] = {}
        # Version manifests are immutable: cached as (manifest, raw bytes, fetched at).
        self._manifests: dict[tuple[str, str, int], tuple[AdapterManifest, bytes, float]] = {}
        self._download_locks: dict[tuple[str, str, int], threading.Lock] = {}
        cache_dir.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- reading
    def _read_state(self, tenant: str, name: str) -> AdapterState | None:
        key = adapter_prefix(tenant, name) + STATE_FILE
        try:
            raw = self.store.get(key)
        except StoreKeyMissing:
            state = None
        else:
            state = self._parse_state(key, raw)
        with self._lock:
            self._states[(tenant, name)] = (state, self.clock())
        return state

    def _change_state(self, tenant: str, name: str,
                      change: Callable[[AdapterState], AdapterState | None]) -> None:
        """Read-modify-write ``state.json`` as a compare-and-swap, retried on conflict.

        ``change`` gets the current state (an empty one when absent) and returns the new
        one, or ``None`` to delete the file; it may raise to refuse, and it runs again on
        every retry, against what another replica wrote."""
        key = adapter_prefix(tenant, name) + STATE_FILE
        result: list[AdapterState | None] = [None]

        def apply(raw: bytes | None) -> bytes | None:
            current = self._parse_state(key, raw) if raw is not None else AdapterState()
            changed = change(current)
            result[0] = changed
            if changed == current and raw is not None:
                return raw
            return None if changed is None else changed.model_dump_json(indent=2).encode()

        update_object(self.store, key, apply)
        with self._lock:
            self._states[(tenant, name)] = (result[0], self.clock())

    def _parse_state(self, key: str, raw: bytes) -> AdapterState:
        try:
            return AdapterState.model_validate_json(raw)
        except ValidationError as exc:
            raise StoreError(f"{self.store.uri}: {key} is corrupt: {exc}") from exc

    def _manifest_exists(self, tenant: str, name: str, version: int) -> bool:
        """Read from the store, not the cache: checked inside a state swap."""
        return self.store.exists(version_prefix(tenant, name, version) + MANIFEST_FILE)

    def _cached_state(self, tenant: str, name: str) -> AdapterState | None:
        """State from the cache while fresh; else the store (stale cache if it fails)."""
        with self._lock:
            entry = self._states.get((tenant, name))
        cached, fetched = entry if entry is not None else (None, 0.0)
        # Only a hit is served from the cache; a miss reads the store at once (lazy lookup).
        if cached is not None and cached.active and self.clock() - fetched < self.refresh_seconds:
            return cached
        try:
            return self._read_state(tenant, name)
        except StoreError:
            if cached is None:
                raise
            logger.warning("store unreachable; serving cached state of %s/%s", tenant, name)
            return cached

    def _manifest(self, tenant: str, name: str, version: int,
                  *, max_age: float | None = None) -> tuple[AdapterManifest, bytes]:
        check_version_number(version)
        cache_key = (tenant, name, version)
        with self._lock:
            cached = self._manifests.get(cache_key)
        if cached is not None and (max_age is None or self.clock() - cached[2] < max_age):
            return cached[0], cached[1]
        key = version_prefix(tenant, name, version) + MANIFEST_FILE
        try:
            raw = self.store.get(key)
        except StoreKeyMissing:
            with self._lock:
                self._manifests.pop(cache_key, None)
            raise AdapterNotFoundError(f"{tenant}/{name}@{version}") from None
        manifest = parse_manifest(raw, f"{self.store.uri}/{key}")
        with self._lock:
            self._manifests[cache_key] = (manifest, raw, self.clock())
        return manifest, raw

    def _versions(self, prefix: str = ROOT) -> dict[tuple[str, str], list[int]]:
        """Every (tenant, name) under ``prefix`` with its versions (those with a manifest)."""
        found: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
        for key in self.store.list(prefix):
            match = _MANIFEST_KEY.match(key)
            if match:
                found[(match["tenant"], match["name"])].append(int(match["v"]))
        return {pair: sorted(versions) for pair, versions in sorted(found.items())}

    def _record(self, tenant: str, name: str, versions: list[int]) -> AdapterRecord:
        state = self._read_state(tenant, name) or AdapterState()
        return AdapterRecord(
            tenant=tenant, name=name, active=state.active, pinned=state.pinned,
            versions=tuple(
                AdapterVersion(tenant, name, v, self._manifest(tenant, name, v)[0])
                for v in versions
            ),
        )

    def get(self, tenant: str, name: str) -> AdapterRecord:
        """The adapter with all its versions; :class:`AdapterNotFoundError` if none."""
        label = _lookup_name(tenant, name)
        versions = self._versions(adapter_prefix(tenant, name)).get((tenant, name))
        if not versions:
            raise AdapterNotFoundError(label)
        return self._record(tenant, name, versions)

    def list(self, tenant: str | None = None) -> list[AdapterRecord]:
        """Every adapter (of one tenant, if given), sorted by tenant and name."""
        if tenant is not None and not SAFE_NAME.fullmatch(tenant):
            return []
        found = self._versions(f"{ROOT}{tenant}/" if tenant else ROOT)
        return [self._record(t, n, vs) for (t, n), vs in found.items()]

    def active(self, tenant: str, name: str) -> AdapterVersion:
        """The version serving requests now (hot path: cached, see the class doc)."""
        label = _lookup_name(tenant, name)
        state = self._cached_state(tenant, name)
        if state is None or state.active is None:
            raise AdapterNotFoundError(label)
        manifest, _ = self._manifest(tenant, name, state.active)
        return AdapterVersion(tenant, name, state.active, manifest)

    def version(self, tenant: str, name: str, version: int) -> AdapterVersion:
        """One version; :class:`AdapterNotFoundError` if it does not exist."""
        _lookup_name(tenant, name)
        manifest, _ = self._manifest(tenant, name, version, max_age=self.refresh_seconds)
        return AdapterVersion(tenant, name, version, manifest)

    def tenants_with_adapters(self) -> dict[str, int]:
        """Number of registered adapters per tenant (for metrics)."""
        counts: collections.Counter[str] = collections.Counter(t for t, _ in self._versions())
        return dict(sorted(counts.items()))

    # -------------------------------------------------------------- registering
    def _allocate(self, tenant: str, name: str) -> int:
        """Claim the next free version number with ``create_exclusive``."""
        prefix = adapter_prefix(tenant, name)
        taken = [int(m["v"]) for key in self.store.list(prefix)
                 if (m := _NUMBERED_KEY.search(key[len(prefix) - 1:]))]
        claim = json.dumps({"claimed_at": datetime.now(UTC).isoformat()}).encode()
        start = max(taken, default=0) + 1
        for version in range(start, start + _MAX_CLAIM_ATTEMPTS):
            if self.store.create_exclusive(f"{prefix}claims/{version:08d}", claim):
                return version
        raise ConflictError(f"could not allocate a version number for {tenant}/{name}")

    def register(self, tenant: str, name: str, staged: Path, *, activate: bool | None = None,
                 manifest_defaults: ManifestDefaults | None = None) -> AdapterVersion:
        """Validate ``staged`` (nothing is written if it fails), then store it as a new version.

        ``activate``: True promotes it, False does not, None promotes it only if the adapter
        has no active version yet. ``manifest_defaults`` admits a plain PEFT folder.
        """
        check_safe_name("tenant", tenant)
        check_safe_name("adapter", name)
        checked = validate_package(staged, self.base, self.limits,
                                   manifest_defaults=manifest_defaults)
        # Blobs are uploaded without holding the write lock (they can be large): the
        # claimed number keeps concurrent registrations apart.
        version = self._allocate(tenant, name)
        data = checked.model_dump(mode="json")
        data.update(tenant=tenant, name=name, version=version)
        manifest = AdapterManifest.model_validate(data)
        raw = self._upload(tenant, name, version, manifest, staged)
        with self._lock:
            self._manifests[(tenant, name, version)] = (manifest, raw, self.clock())
        if activate is not False:
            def activate_new(state: AdapterState) -> AdapterState:
                if activate or state.active is None:
                    return _activated(state, version)
                return state

            with self._write_lock:
                self._change_state(tenant, name, activate_new)
        logger.info("registered %s/%s version %d", tenant, name, version)
        return AdapterVersion(tenant, name, version, manifest)

    def _upload(self, tenant: str, name: str, version: int, manifest: AdapterManifest,
                staged: Path) -> bytes:
        """Blobs first, the manifest last; on failure remove the blobs (best effort)."""
        prefix = version_prefix(tenant, name, version)
        uploaded: list[str] = []
        try:
            for file_name in sorted(manifest.files):
                self.store.put_file(prefix + file_name, staged / file_name)
                uploaded.append(prefix + file_name)
            raw = manifest.to_json().encode()
            self.store.put(prefix + MANIFEST_FILE, raw)  # last: now the version exists
        except StoreError:
            for key in uploaded:  # leftovers would be invisible anyway
                try:
                    self.store.delete(key)
                except StoreError:
                    logger.warning("could not remove orphan %s", key)
            raise
        return raw

    def register_from_uri(self, tenant: str, name: str, uri: str, *,
                          activate: bool | None = None,
                          manifest_defaults: ManifestDefaults | None = None) -> AdapterVersion:
        """Register the package at ``file:///folder`` (below one of ``import_roots``) or
        ``s3://bucket/prefix/``."""
        check_safe_name("tenant", tenant)
        check_safe_name("adapter", name)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".fetch-") as tmp:
            staged = stage_from_uri(uri, Path(tmp) / "package", self.limits,
                                    file_roots=self.import_roots,
                                    registry_store=self.store)
            return self.register(tenant, name, staged, activate=activate,
                                 manifest_defaults=manifest_defaults)

    # ----------------------------------------------------------------- changing
    # Every change of state.json is a compare-and-swap (see _change_state); the write lock
    # only saves this replica's own threads from retrying against each other.
    def _activatable(self, tenant: str, name: str, version: int,
                     state: AdapterState) -> None:
        if version in state.deleted or not self._manifest_exists(tenant, name, version):
            raise AdapterNotFoundError(f"{tenant}/{name}@{version}")

    def promote(self, tenant: str, name: str, version: int) -> AdapterRecord:
        """Make ``version`` the active one (the current one goes into the history)."""
        self.version(tenant, name, version)

        def promoted(state: AdapterState) -> AdapterState:
            self._activatable(tenant, name, version, state)
            return _activated(state, version)

        with self._write_lock:
            self._change_state(tenant, name, promoted)
            return self.get(tenant, name)

    def promote_if_active(self, tenant: str, name: str, version: int, expected: int) -> bool:
        """Make ``version`` active only if ``expected`` is still the active version, in one
        compare-and-swap (a retraining run promotes against the version it started from:
        an operator's rollback, promotion or deletion meanwhile wins). False, changing
        nothing, otherwise; a deleted adapter is never brought back."""
        def swapped(state: AdapterState) -> AdapterState:
            if state.active != expected or state.active is None or version in state.deleted:
                raise ConflictError(f"{tenant}/{name}: version {expected} is no longer the "
                                    "active one")
            return _activated(state, version)

        with self._write_lock:
            try:
                self._change_state(tenant, name, swapped)
            except ConflictError:
                return False
        return True

    def rollback(self, tenant: str, name: str) -> AdapterRecord:
        """Re-activate the previously active version; :class:`ConflictError` if none."""
        def rolled_back(state: AdapterState) -> AdapterState:
            history = list(state.previous)
            while history:
                candidate = history.pop()
                if candidate != state.active and candidate not in state.deleted and \
                        self._manifest_exists(tenant, name, candidate):
                    return state.model_copy(update={"active": candidate, "previous": history})
            raise ConflictError(f"{tenant}/{name} has no previous version to roll back to")

        with self._write_lock:
            self.get(tenant, name)
            self._change_state(tenant, name, rolled_back)
            return self.get(tenant, name)

    def set_pinned(self, tenant: str, name: str, pinned: bool) -> AdapterRecord:
        """Set the adapter's pin flag."""
        with self._write_lock:
            self.get(tenant, name)
            self._change_state(tenant, name,
                               lambda state: state.model_copy(update={"pinned": pinned}))
            return self.get(tenant, name)

    def delete_version(self, tenant: str, name: str, version: int) -> None:
        """Delete one version; :class:`ConflictError` while it is the active one."""
        def marked(state: AdapterState) -> AdapterState:
            if state.active == version:
                raise ConflictError(
                    f"version {version} of {tenant}/{name} is active; promote another "
                    "version first or delete the whole adapter"
                )
            return state.model_copy(update={
                "previous": [v for v in state.previous if v != version],
                "deleted": sorted({*state.deleted, version})})

        with self._write_lock:
            self.version(tenant, name, version)
            self._change_state(tenant, name, marked)  # first: it can never be promoted again
            self._delete_prefix(version_prefix(tenant, name, version))
            self._forget(tenant, name, version)

    def delete_adapter(self, tenant: str, name: str) -> None:
        """Delete every version and the state; version numbers stay claimed (never reused)."""
        with self._write_lock:
            record = self.get(tenant, name)
            doomed = {v.version for v in record.versions}
            # First, in one swap: nothing serves and no listed version can be promoted.
            self._change_state(tenant, name, lambda state: AdapterState(
                deleted=sorted({*state.deleted, *doomed}), pinned=state.pinned))
            prefix = adapter_prefix(tenant, name)
            for version in sorted(doomed):
                self._delete_prefix(version_prefix(tenant, name, version))
            newest = max(doomed)
            for key in self.store.list(prefix + "versions/"):  # orphans of crashed uploads
                match = _NUMBERED_KEY.search(key[len(prefix) - 1:])
                if match and int(match["v"]) <= newest:  # not a registration running now
                    self.store.delete(key)
            # Last: the state, unless a version registered meanwhile was activated.
            self._change_state(tenant, name,
                               lambda state: None if state.active is None else state)
            with self._lock:
                self._states.pop((tenant, name), None)
            for version in doomed:
                self._forget(tenant, name, version)

    def _delete_prefix(self, prefix: str) -> None:
        """Delete a version: the manifest first (it vanishes atomically), then its blobs."""
        self.store.delete(prefix + MANIFEST_FILE)
        for key in self.store.list(prefix):
            self.store.delete(key)

    def _forget(self, tenant: str, name: str, version: int) -> None:
        with self._lock:
            self._manifests.pop((tenant, name, version), None)
        shutil.rmtree(self.cache_dir / tenant / name / str(version), ignore_errors=True)

    # ------------------------------------------------------------ local copies
    def local_folder(self, tenant: str, name: str, version: int) -> Path:
        """The version's files in ``cache_dir/{tenant}/{name}/{version}/`` (sha256-checked)."""
        _lookup_name(tenant, name)
        manifest, raw = self._manifest(tenant, name, version)
        final = self.cache_dir / tenant / name / str(version)
        if is_complete_copy(final, manifest.files, raw):
            return final
        with self._lock:
            lock = self._download_locks.setdefault((tenant, name, version), threading.Lock())
        with lock:
            if not is_complete_copy(final, manifest.files, raw):
                download_verified(self.store, version_prefix(tenant, name, version),
                                  manifest.files, raw, final)
        return final
