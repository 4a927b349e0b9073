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
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adapters.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    StoreError,
    describe_problems,
)
from adapters.package import SAFE_NAME, SAFE_NAME_RULE
from adapters.store.base import ObjectStore, StoreKeyMissing

KEY_PREFIX = "lsk_"
TENANTS_PREFIX = "tenants/"


def _now() -> datetime:
    return datetime.now(UTC)


def key_digest(key: str) -> str:
    """Hex sha256 of an API key, as stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class TenantPolicy(BaseModel):
    """What a tenant may do: use the bare base model, request rate, concurrency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_base_model: bool = True
    requests_per_second: float | None = Field(default=None, gt=0)
    max_concurrent: int | None = Field(default=None, ge=1)
    # Prediction capture for drift feedback and retraining (drift helper): "off", "all",
    # or the share of predictions captured (0..1).
    capture: Literal["off", "all"] | Annotated[float, Field(ge=0, le=1)] = "off"

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
    """``tenants/{name}.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    created_at: datetime
    key_digests: list[KeyDigest] = Field(default_factory=list)
    policy: TenantPolicy = Field(default_factory=TenantPolicy)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not SAFE_NAME.fullmatch(value):
            raise ValueError(f"tenant name {value!r} is invalid: {SAFE_NAME_RULE}")
        return value


def parse_policy(data: object) -> TenantPolicy:
    """A policy from untrusted JSON data; :class:`InvalidRequestError` names the bad field."""
    try:
        return TenantPolicy.model_validate(data)
    except ValidationError as exc:
        problems = describe_problems(exc.errors(), "policy")
        raise InvalidRequestError(f"tenant policy is invalid: {problems}") from exc


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

    def _write(self, record: TenantRecord) -> None:
        self.store.put(self._key(record.name), record.model_dump_json(indent=2).encode())
        self._invalidate()

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
        """Every tenant, sorted by name."""
        records = []
        for key in self.store.list(TENANTS_PREFIX):
            name = key[len(TENANTS_PREFIX):].removesuffix(".json")
            if "/" in name or not key.endswith(".json") or not SAFE_NAME.fullmatch(name):
                continue
            try:
                records.append(self._parse(key, self.store.get(key)))
            except StoreKeyMissing:
                continue  # deleted while listing
        return records

    def create(self, name: str, policy: TenantPolicy | None = None) -> tuple[TenantRecord, str]:
        """Create a tenant with one key; returns the record and the plaintext key (once)."""
        _check_name(name)
        key, digest = _new_key()
        record = TenantRecord(name=name, created_at=_now(), key_digests=[digest],
                              policy=policy or TenantPolicy())
        if not self.store.create_exclusive(self._key(name),
                                           record.model_dump_json(indent=2).encode()):
            raise ConflictError(f"tenant {name!r} already exists")
        self._invalidate()
        return record, key

    def delete(self, name: str) -> None:
        """Delete the tenant; its keys stop working here at once, elsewhere on refresh."""
        self.get(name)
        self.store.delete(self._key(name))
        with self._lock:
            self._index = [(d, r) for d, r in self._index if r.name != name]

    def rotate_key(self, name: str) -> str:
        """Replace every key of the tenant by a new one; returns it (shown once)."""
        record = self.get(name)
        key, digest = _new_key()
        self._write(record.model_copy(update={"key_digests": [digest]}))
        with self._lock:  # the old keys stop working on this replica right away
            self._index = [(d, r) for d, r in self._index if r.name != name]
        return key

    def update_policy(self, name: str, policy: TenantPolicy) -> TenantRecord:
        """Replace the tenant's policy."""
        record = self.get(name).model_copy(update={"policy": policy})
        self._write(record)
        return record

    # ---------------------------------------------------------------- authentication
    def _reload(self) -> None:
        index = [(digest.sha256, record) for record in self.list()
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

    def authenticate(self, key: str) -> TenantRecord | None:
        """The tenant owning ``key``, or ``None``."""
        if not key.startswith(KEY_PREFIX):
            return None
        digest = key_digest(key)
        if self._stale():
            with self._reload_lock:
                if self._stale():
                    self._reload()
        found = self._match(digest)
        if found is not None:
            return found
        # A miss: maybe the key was just created on another replica. Re-read, unless a
        # miss already did so very recently (bad keys must not hammer the store).
        with self._reload_lock:
            now = self.clock()
            last = self._miss_reload_at
            if last is not None and now - last < self.miss_reload_seconds:
                return None
            self._miss_reload_at = now
            self._reload()
        return self._match(digest)
