"""Test-only fault hooks, armed only by an explicit setting (crash-safety tests).

``LORASWAP_FAULT_PAUSE_BEFORE_PUBLISH=<key suffix>`` makes a write (a put or a
compare-and-swap) of a matching key pause forever just before it is published, and log
``fault hook: paused before publishing <key>``; a test then kills the process with SIGKILL
right there and checks what a restart finds. A value with a ``*`` is a pattern for the
whole key instead (``fnmatch``: ``feedback/*`` pauses every feedback batch).

Where it pauses, per store:

* folder store: after the temporary file is written and fsynced, before it is renamed
  into place (holding the key's lock, for a compare-and-swap);
* S3 store: in the middle of the ``PutObject`` request (plain or conditional), with its
  headers and all of its body but the last byte sent to the server, so that the kill
  leaves the server a request cut short (what a crash mid-upload does).
"""

from __future__ import annotations

import fnmatch
import io
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from loraswap.adapters.store import FileSystemStore, ObjectStore, S3Store
from loraswap.service.settings import Settings

logger = logging.getLogger(__name__)

PAUSED_MESSAGE = "fault hook: paused before publishing"


def arm_fault_hook(store: ObjectStore, settings: Settings) -> ObjectStore:
    """``store``, with the pause armed when the setting asks for it (never by default)."""
    wanted = settings.fault_pause_before_publish
    if not wanted:
        return store

    def matches(key: str) -> bool:
        return fnmatch.fnmatchcase(key, wanted) if "*" in wanted else key.endswith(wanted)

    def pause(key: str, where: str) -> None:
        logger.warning("%s %s (%s)", PAUSED_MESSAGE, key, where)
        threading.Event().wait()  # until the test kills the process

    if isinstance(store, FileSystemStore):
        def pause_file(key: str) -> None:
            if matches(key):
                pause(key, "temporary file written and fsynced")

        store.before_publish = pause_file
    elif isinstance(store, S3Store):
        _arm_s3(store, matches, pause)
    return store


def _s3_key(store: S3Store, url: str) -> str | None:
    """The store key a request URL names (path-style or virtual-hosted), else ``None``."""
    path = unquote(urlsplit(url).path).lstrip("/")
    for lead in (f"{store.bucket}/{store.prefix}", store.prefix):
        if path.startswith(lead) and len(path) > len(lead):
            return path[len(lead):]
    return None


def _arm_s3(store: S3Store, matches: Callable[[str], bool],
            pause: Callable[[str, str], None]) -> None:
    """Hold back the last byte of every matching ``PutObject`` body (boto3's
    ``before-send``: the request is signed, its checksum computed, nothing sent yet)."""
    def hold(request: Any, **_: Any) -> None:
        key = _s3_key(store, str(request.url))
        if key is None or not matches(key) or request.body is None:
            return
        body = request.body
        data = body if isinstance(body, bytes) else body.read()
        request.body = _LastByteHeld(data, lambda sent: pause(
            key, f"{sent} of {len(data)} body bytes sent to the server"))

    store.client.meta.events.register("before-send.s3.PutObject", hold)


class _LastByteHeld(io.RawIOBase):
    """A request body that gives all of ``data`` but its last byte, then calls ``pause``
    (with the count given so far) before giving the rest."""

    def __init__(self, data: bytes, pause: Callable[[int], None]) -> None:
        super().__init__()
        self._data = data
        self._pause = pause
        self._given = 0
        self._paused = False

    def readable(self) -> bool:
        """A readable stream."""
        return True

    def seekable(self) -> bool:
        """Seekable (botocore rewinds a body to retry)."""
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move within the body."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._given, io.SEEK_END: len(self._data)}
        self._given = max(0, min(len(self._data), base[whence] + offset))
        return self._given

    def tell(self) -> int:
        """Bytes given so far."""
        return self._given

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes; pauses once only the last byte is left."""
        total = len(self._data)
        if total and self._given >= total - 1 and not self._paused:
            self._paused = True
            self._pause(self._given)
        end = total if self._paused else total - 1
        if size is not None and size >= 0:
            end = min(end, self._given + size)
        chunk = self._data[self._given:end]
        self._given = max(self._given, end)
        return chunk

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` (see :meth:`read`)."""
        chunk = self.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)
