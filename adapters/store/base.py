"""The object-store contract shared by the filesystem and S3 backends.

Keys are ``/``-separated relative paths (``adapters/acme/chat/state.json``). Every backend
error surfaces as :class:`StoreError` naming the store and the key; a missing object is
:class:`StoreKeyMissing`, which is a :class:`NotFoundError`, not a failure of the store.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

from loraswap.core.errors import ConflictError, NotFoundError, StoreError

# One key segment: starts with a letter, digit or '_' (so never '.', '..' or a hidden
# temporary file of the filesystem backend), then a conservative set of characters.
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+@,~-]{0,254}")
MAX_KEY_LENGTH = 1024

T = TypeVar("T")


class StoreKeyMissing(NotFoundError):  # noqa: N818 (name fixed by the interface)
    """The requested object does not exist in the store."""

    code = "not_found"

    def __init__(self, store_uri: str, key: str) -> None:
        super().__init__(f"{store_uri}: no object {key!r}")
        self.store_uri = store_uri
        self.key = key


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise :class:`StoreError`.

    Refused: empty keys, a leading ``/``, empty, ``.`` or ``..`` segments, backslashes and
    characters outside ``[A-Za-z0-9._=+@,~-]``; these could escape the filesystem root or
    mean different objects on different backends.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise StoreError(f"invalid object key {key!r}: must be 1-{MAX_KEY_LENGTH} characters")
    if key.startswith("/"):
        raise StoreError(f"invalid object key {key!r}: must not start with '/'")
    for segment in key.split("/"):
        if segment == "..":
            raise StoreError(f"invalid object key {key!r}: '..' is not allowed")
        if not _SEGMENT.fullmatch(segment):
            raise StoreError(
                f"invalid object key {key!r}: segment {segment!r} must start with a letter, "
                "digit or '_' and use only letters, digits and '._=+@,~-'"
            )
    return key


def check_prefix(prefix: str) -> str:
    """Validate a listing prefix: ``""``, a key, or a key followed by ``/``."""
    if prefix == "":
        return prefix
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


class ObjectStore(Protocol):
    """A flat key/value store of immutable-until-replaced byte objects."""

    uri: str

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`StoreKeyMissing` if absent."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Write atomically: readers see the old or the new object, never a partial one."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Upload the file at ``path`` (atomically, like :meth:`put`)."""
        ...

    def download(self, key: str, path: Path) -> None:
        """Write the object to ``path`` (replaced atomically); :class:`StoreKeyMissing`."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (plain string prefix), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting an absent key is not an error."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        ...

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write only if absent, atomically; ``False`` if the key already existed."""
        ...

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and a tag that changes whenever its content changes."""
        ...

    def put_if_match(self, key: str, data: bytes, expected: str | None) -> bool:
        """Compare-and-swap: write only if the object's tag is ``expected`` (``None``: only
        if absent); ``False`` when it is not."""
        ...

    def delete_if_match(self, key: str, expected: str) -> bool:
        """Delete only if the object's tag is ``expected``; ``False`` when it is not."""
        ...


# A compare-and-swap that keeps losing means many writers on one object; beyond this many
# attempts the caller gets a ConflictError (409) to retry later.
CAS_ATTEMPTS = 50


def update_object(store: ObjectStore, key: str,
                  change: Callable[[bytes | None], bytes | None]) -> bytes | None:
    """Read-modify-write ``key`` as a compare-and-swap, retried on conflict.

    ``change`` gets the current bytes (``None``: absent) and returns the new bytes, ``None``
    to delete, or the same bytes to leave it alone; it may raise to abort, and it runs again
    on every retry, against what another writer left. Returns what was written.
    """
    for attempt in range(CAS_ATTEMPTS):
        try:
            current, tag = store.get_versioned(key)
        except StoreKeyMissing:
            current, tag = None, None
        wanted = change(current)
        if wanted == current:
            return current
        if wanted is None:
            assert tag is not None  # current is not None here
            done = store.delete_if_match(key, tag)
        else:
            done = store.put_if_match(key, wanted, tag)
        if done:
            return wanted
        # Lost the race: back off a little (jittered) so that writers do not collide again.
        time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
    raise ConflictError(f"{store.uri}: {key!r} changed {CAS_ATTEMPTS} times while being "
                        "updated; try again")


@runtime_checkable
class SizedStore(Protocol):
    """A store that can tell an object's size without reading it (both backends can)."""

    def size(self, key: str) -> int:
        """Size in bytes; :class:`StoreKeyMissing` if absent."""
        ...


class StoreObserver(Protocol):
    """Receives the latency and outcome of every store operation (e.g. for Prometheus)."""

    def observe_store(self, operation: str, seconds: float, ok: bool) -> None:
        """Called once per operation; ``ok`` is False when it raised :class:`StoreError`."""
        ...


class ObservedStore:
    """Wraps a store and reports each operation to a :class:`StoreObserver`.

    A missing key is a normal answer, not a store failure, so it is reported as ``ok``.
    """

    def __init__(self, inner: ObjectStore, observer: StoreObserver) -> None:
        self.inner = inner
        self.observer = observer
        self.uri = inner.uri

    def _timed(self, operation: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        ok = False
        try:
            result = call()
            ok = True
            return result
        except StoreKeyMissing:
            ok = True
            raise
        finally:
            self.observer.observe_store(operation, time.perf_counter() - started, ok)

    def get(self, key: str) -> bytes:
        """See :meth:`ObjectStore.get`."""
        return self._timed("get", lambda: self.inner.get(key))

    def put(self, key: str, data: bytes) -> None:
        """See :meth:`ObjectStore.put`."""
        self._timed("put", lambda: self.inner.put(key, data))

    def put_file(self, key: str, path: Path) -> None:
        """See :meth:`ObjectStore.put_file`."""
        self._timed("put_file", lambda: self.inner.put_file(key, path))

    def download(self, key: str, path: Path) -> None:
        """See :meth:`ObjectStore.download`."""
        self._timed("download", lambda: self.inner.download(key, path))

    def list(self, prefix: str) -> list[str]:
        """See :meth:`ObjectStore.list`."""
        return self._timed("list", lambda: self.inner.list(prefix))

    def delete(self, key: str) -> None:
        """See :meth:`ObjectStore.delete`."""
        self._timed("delete", lambda: self.inner.delete(key))

    def exists(self, key: str) -> bool:
        """See :meth:`ObjectStore.exists`."""
        return self._timed("exists", lambda: self.inner.exists(key))

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """See :meth:`ObjectStore.create_exclusive`."""
        return self._timed("create_exclusive", lambda: self.inner.create_exclusive(key, data))

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """See :meth:`ObjectStore.get_versioned`."""
        return self._timed("get", lambda: self.inner.get_versioned(key))

    def put_if_match(self, key: str, data: bytes, expected: str | None) -> bool:
        """See :meth:`ObjectStore.put_if_match`."""
        return self._timed("put_if_match",
                           lambda: self.inner.put_if_match(key, data, expected))

    def delete_if_match(self, key: str, expected: str) -> bool:
        """See :meth:`ObjectStore.delete_if_match`."""
        return self._timed("delete_if_match", lambda: self.inner.delete_if_match(key, expected))

    def size(self, key: str) -> int:
        """Size of an object, when the wrapped store can tell it cheaply."""
        inner = self.inner
        if not isinstance(inner, SizedStore):
            raise StoreError(f"{self.uri}: this store cannot report object sizes")
        return self._timed("size", lambda: inner.size(key))
