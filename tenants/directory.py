"""Tenants and their API keys, stored beside the adapters as ``tenants/{name}.json``.

Only the sha256 digest of a key is stored; the plaintext (``lsk_`` + 43 URL-safe characters)
is shown once, when the tenant is created or its key rotated. :meth:`TenantDirectory.
authenticate` compares the digest of a presented key with *every* known digest using
``hmac.compare_digest`` and no early exit, so timing reveals neither which tenant matched
nor how much of a digest did. The digest index is cached for ``refresh_seconds`` and re-read
at once when a key is not found, so that a key created on another replica works
immediately; repeated misses (a stream of bad keys) re-read at most every
``miss_reload_seconds``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loraswap.adapters.store.base import ObjectStore, StoreKeyMissing, update_object
from loraswap.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    StoreError,
    validated,
)
from loraswap.core.identity import SAFE_NAME, SAFE_NAME_RULE

logger = logging.getLogger(__name__)

KEY_PREFIX = "lsk_"
TENANTS_PREFIX = "tenants/"
# A request rate's bounds: 1/rate (a refill time, a Retry-After) must stay a sane number.
MIN_REQUESTS_PER_SECOND = 0.001
MAX_REQUESTS_PER_SECOND = 1e6
TENANT_ID_PATTERN = r"^[0-9a-f]{16}$"


def _now() -> datetime:
    return datetime.now(UTC)


def key_digest(key: str) -> str:
    """Hex sha256 of an API key, as stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class TenantPolicy(BaseModel):
    """What a tenant may do, and how much of it: the stored policy, the admin API's body and
    answer, and what the request path enforces (one model for all three)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_base_model: bool = Field(default=True, description="May call the base model.")
    requests_per_second: float | None = Field(
        default=None, ge=MIN_REQUESTS_PER_SECOND, le=MAX_REQUESTS_PER_SECOND,
        description="Sustained request rate per replica (0.001 to 10^6); null: no limit.")
    max_concurrent: int | None = Field(
        default=None, ge=1, description="Requests in flight per replica; null: no limit.")
    # Prediction capture for drift feedback and retraining: "off", "all", or the share of
    # predictions captured (0..1).
    capture: Literal["off", "all"] | Annotated[float, Field(ge=0, le=1)] = Field(
        default="off", description="Prediction capture for feedback and retraining: "
        "\"off\", \"all\", or the share captured (0..1).")

    @property
    def capture_share(self) -> float:
        """Share of predictions to capture: 0 (off) to 1 (all)."""
        if isinstance(self.capture, str):
            return 1.0 if self.capture == "all" else 0.0
        return float(self.capture)


class KeyDigest(BaseModel):
    """One API key, as its sha256 digest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime


class TenantRecord(BaseModel):
    """``tenants/{name}.json``.

    ``id`` is minted when the tenant is created and never changes: the tenant's captured
    data lives under its :attr:`data_owner`, so a tenant created again under a deleted
    one's name starts with none of its data. Records written before ids existed have none
    and own the data under their name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    id: str | None = Field(default=None, pattern=TENANT_ID_PATTERN)
    created_at: datetime
    key_digests: list[KeyDigest] = Field(default_factory=list)
    policy: TenantPolicy = Field(default_factory=TenantPolicy)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not SAFE_NAME.fullmatch(value):
            raise ValueError(f"tenant name {value!r} is invalid: {SAFE_NAME_RULE}")
        return value

    @property
    def data_owner(self) -> str:
        """The store segment owning this tenant's captures, index and feedback
        (``{name}.{id}``; ``{name}`` for a record from before ids). A name never holds a
        ``.``, so an owner with an id is never another tenant's name."""
        return self.name if self.id is None else f"{self.name}.{self.id}"


def parse_policy(data: object) -> TenantPolicy:
    """A policy from untrusted JSON data; :class:`InvalidRequestError` names the bad field."""
    return validated(TenantPolicy, data, root="policy", error=InvalidRequestError,
                     prefix="tenant policy is invalid")


def _check_name(name: str) -> str:
    if not SAFE_NAME.fullmatch(name):
        raise InvalidRequestError(f"tenant name {name!r} is invalid: {SAFE_NAME_RULE}")
    return name


def _new_key() -> tuple[str, KeyDigest]:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, KeyDigest(id=secrets.token_hex(8), sha256=key_digest(key), created_at=_now())


class TenantDirectory:
    """Tenants in an object store; thread-safe; replicas converge through the store."""

    def __init__(self, store: ObjectStore, *, refresh_seconds: float = 2.0,
                 miss_reload_seconds: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.miss_reload_seconds = miss_reload_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._index: list[tuple[str, TenantRecord]] = []  # (key digest, tenant)
        self._loaded_at: float | None = None
        self._miss_reload_at: float | None = None
        self._unreadable: tuple[str, ...] = ()

    @staticmethod
    def _key(name: str) -> str:
        return f"{TENANTS_PREFIX}{name}.json"

    def _parse(self, key: str, raw: bytes) -> TenantRecord:
        try:
            return TenantRecord.model_validate_json(raw)
        except ValidationError as exc:
            raise StoreError(f"{self.store.uri}: {key} is corrupt: {exc}") from exc

    def _read(self, name: str) -> TenantRecord | None:
        try:
            raw = self.store.get(self._key(name))
        except StoreKeyMissing:
            return None
        return self._parse(self._key(name), raw)

    def _change(self, name: str,
                change: Callable[[TenantRecord], TenantRecord | None]) -> TenantRecord | None:
        """Read-modify-write one record as a compare-and-swap (retried on conflict), so
        concurrent changes on any replica never undo each other; ``change`` returns the new
        record, or ``None`` to delete it. :class:`NotFoundError` when the tenant is absent."""
        key = self._key(name)
        result: list[TenantRecord | None] = [None]

        def apply(raw: bytes | None) -> bytes | None:
            if raw is None:
                raise NotFoundError(f"tenant {name!r} not found")
            changed = change(self._parse(key, raw))
            result[0] = changed
            return None if changed is None else changed.model_dump_json(indent=2).encode()

        if not SAFE_NAME.fullmatch(name):
            raise NotFoundError(f"tenant {name!r} not found")
        update_object(self.store, key, apply)
        self._invalidate()
        return result[0]

    def _invalidate(self) -> None:
        with self._lock:
            self._loaded_at = None

    def get(self, name: str) -> TenantRecord:
        """The tenant; :class:`NotFoundError` naming it when absent."""
        record = self._read(name) if SAFE_NAME.fullmatch(name) else None
        if record is None:
            raise NotFoundError(f"tenant {name!r} not found")
        return record

    def list(self) -> list[TenantRecord]:
        """Every readable tenant, sorted by name; a corrupt record is skipped and reported
        (logged, and in :meth:`unreadable_records`) so that it cannot lock out the others."""
        records = []
        unreadable = []
        for key in self.store.list(TENANTS_PREFIX):
            name = key[len(TENANTS_PREFIX):].removesuffix(".json")
            if "/" in name or not key.endswith(".json") or not SAFE_NAME.fullmatch(name):
                continue
            try:
                raw = self.store.get(key)
            except StoreKeyMissing:
                continue  # deleted while listing
            try:
                records.append(self._parse(key, raw))
            except StoreError as exc:
                logger.warning("skipping unreadable tenant record: %s", exc)
                unreadable.append(key)
        with self._lock:
            self._unreadable = tuple(unreadable)
        return records

    def unreadable_records(self) -> tuple[str, ...]:
        """Keys of the tenant records the last listing could not parse (for operators)."""
        with self._lock:
            return self._unreadable

    def create(self, name: str, policy: TenantPolicy | None = None) -> tuple[TenantRecord, str]:
        """Create a tenant with one key; returns the record and the plaintext key (once)."""
        _check_name(name)
        key, digest = _new_key()
        record = TenantRecord(name=name, id=secrets.token_hex(8), created_at=_now(),
                              key_digests=[digest],
                              policy=policy or TenantPolicy())
        if not self.store.create_exclusive(self._key(name),
                                           record.model_dump_json(indent=2).encode()):
            raise ConflictError(f"tenant {name!r} already exists")
        self._invalidate()
        return record, key

    def delete(self, name: str) -> None:
        """Delete the tenant; its keys stop working here at once, elsewhere on refresh."""
        self._change(name, lambda record: None)
        with self._lock:
            self._index = [(d, r) for d, r in self._index if r.name != name]

    def rotate_key(self, name: str) -> str:
        """Replace every key of the tenant by a new one; returns it (shown once)."""
        key, digest = _new_key()
        self._change(name, lambda record: record.model_copy(update={"key_digests": [digest]}))
        with self._lock:  # the old keys stop working on this replica right away
            self._index = [(d, r) for d, r in self._index if r.name != name]
        return key

    def update_policy(self, name: str, policy: TenantPolicy) -> TenantRecord:
        """Replace the tenant's policy."""
        record = self._change(name, lambda current: current.model_copy(
            update={"policy": policy}))
        assert record is not None
        return record

    # ---------------------------------------------------------------- authentication
    # Valid keys never wait for a reload that another caller is doing: they are matched
    # against the index in hand. A reload that fails keeps the last good index (and counts
    # as a reload, so a down store is not retried on every request). Reloads caused by
    # unknown keys are rate-limited for the whole directory.
    def _reload(self) -> None:
        """Re-read the index; on a store failure keep the last good one (if any)."""
        try:
            records = self.list()
        except StoreError:
            with self._lock:
                never_loaded = not self._index and self._loaded_at is None
                if not never_loaded:
                    self._loaded_at = self.clock()
            if never_loaded:
                raise
            logger.warning("tenant store unreachable; authenticating from the last good "
                           "tenant index", exc_info=True)
            return
        index = [(digest.sha256, record) for record in records
                 for digest in record.key_digests]
        with self._lock:
            self._index = index
            self._loaded_at = self.clock()

    def _match(self, digest: str) -> TenantRecord | None:
        with self._lock:
            index = self._index
        found: TenantRecord | None = None
        for known, record in index:
            # Every digest is compared, and the loop never breaks: constant work per call.
            if hmac.compare_digest(known, digest):
                found = record
        return found

    def _stale(self) -> bool:
        with self._lock:
            loaded = self._loaded_at
        return loaded is None or self.clock() - loaded >= self.refresh_seconds

    def _refresh_if_stale(self) -> None:
        """Reload a stale index; wait for another caller's reload only if there is no index
        at all yet."""
        with self._lock:
            never_loaded = self._loaded_at is None
        if not self._reload_lock.acquire(blocking=never_loaded):
            return  # someone else is reloading: answer from the index in hand
        try:
            if self._stale():
                self._reload()
        finally:
            self._reload_lock.release()

    def _claim_miss_reload(self) -> bool:
        """Whether this miss may reload: at most one per ``miss_reload_seconds``."""
        with self._lock:
            now = self.clock()
            last = self._miss_reload_at
            if last is not None and now - last < self.miss_reload_seconds:
                return False
            self._miss_reload_at = now
            return True

    def authenticate(self, key: str) -> TenantRecord | None:
        """The tenant owning ``key``, or ``None``."""
        if not key.startswith(KEY_PREFIX):
            return None
        digest = key_digest(key)
        if self._stale():
            self._refresh_if_stale()
        found = self._match(digest)
        if found is not None:
            return found
        # A miss: maybe the key was just created on another replica. Re-read, unless a
        # miss already did so very recently (bad keys must not hammer the store).
        if not self._claim_miss_reload():
            return None
        with self._reload_lock:
            self._reload()
        return self._match(digest)
