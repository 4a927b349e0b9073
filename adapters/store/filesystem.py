"""Object store on a local (or network) filesystem: one file per key under a root folder.

Writes go to a hidden temporary file in the destination folder, are fsynced, and are moved
into place with ``os.replace`` (atomic on POSIX), so readers never see a partial object.
:meth:`FileSystemStore.create_exclusive` publishes its temporary file with ``os.link``,
which fails if the key exists: exactly one of several concurrent writers wins, also across
processes sharing the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from loraswap.adapters.store.base import StoreKeyMissing, check_key, check_prefix
from loraswap.core.errors import StoreError

T = TypeVar("T")
_TMP_MARK = ".tmp-"
_LOCK_MARK = ".lock"
_CHUNK = 1 << 20
# A concurrent delete may remove an empty parent folder between mkdir and the write.
_WRITE_ATTEMPTS = 5


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; some filesystems refuse to open folders, which is harmless.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FileSystemStore:
    """``file:///abs/path``: keys are relative paths under ``root``."""

    def __init__(self, root: Path) -> None:
        if not root.is_absolute():
            raise StoreError(f"filesystem store root {str(root)!r} must be an absolute path")
        self.root = root
        self.uri = root.as_uri()
        # Test-only fault hook (crash-safety tests): called with the key after a put or a
        # compare-and-swap has written its temporary file and before it is published.
        self.before_publish: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"FileSystemStore({self.uri!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _fail(self, operation: str, key: str, exc: OSError) -> StoreError:
        return StoreError(f"{self.uri}: {operation} {key!r} failed: {exc}")

    def _guard(self, operation: str, key: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except FileNotFoundError as exc:
            raise StoreKeyMissing(self.uri, key) from exc
        except IsADirectoryError as exc:
            raise StoreKeyMissing(self.uri, key) from exc
        except OSError as exc:
            raise self._fail(operation, key, exc) from exc

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`StoreKeyMissing` if absent."""
        path = self._path(key)
        return self._guard("get", key, path.read_bytes)

    def size(self, key: str) -> int:
        """Size of the object in bytes."""
        path = self._path(key)
        info = self._guard("size", key, path.stat)
        if not stat.S_ISREG(info.st_mode):
            raise StoreKeyMissing(self.uri, key)
        return info.st_size

    def _write_temp(self, target: Path, fill: Callable[[int], None]) -> Path:
        """Create ``target``'s folder and a synced temporary file in it, filled by ``fill``."""
        for attempt in range(_WRITE_ATTEMPTS):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}{_TMP_MARK}{uuid.uuid4().hex}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
                continue
            try:
                fill(fd)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
            return tmp
        raise AssertionError("unreachable")

    def _write_bytes(self, target: Path, data: bytes) -> Path:
        def fill(fd: int) -> None:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]

        return self._write_temp(target, fill)

    def _publish(self, tmp: Path, target: Path) -> None:
        try:
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    def put(self, key: str, data: bytes) -> None:
        """Write atomically (temporary file + fsync + ``os.replace``)."""
        target = self._path(key)
        try:
            self._write_and_publish(key, target, data)
        except OSError as exc:
            raise self._fail("put", key, exc) from exc

    def _write_and_publish(self, key: str, target: Path, data: bytes) -> None:
        """Write ``data`` beside ``target`` (fsynced), run the test-only publish hook, then
        publish it under ``target`` (one path for plain and conditional writes)."""
        tmp = self._write_bytes(target, data)
        if self.before_publish is not None:
            self.before_publish(key)
        self._publish(tmp, target)

    def put_file(self, key: str, path: Path) -> None:
        """Copy ``path`` into the store atomically."""
        target = self._path(key)

        def fill(fd: int) -> None:
            with path.open("rb") as source, os.fdopen(os.dup(fd), "wb") as sink:
                shutil.copyfileobj(source, sink, _CHUNK)

        try:
            self._publish(self._write_temp(target, fill), target)
        except OSError as exc:
            raise self._fail("put_file", key, exc) from exc

    def download(self, key: str, path: Path) -> None:
        """Copy the object to ``path``, replacing it atomically."""
        source = self._path(key)
        tmp = path.parent / f".{path.name}{_TMP_MARK}{uuid.uuid4().hex}"
        try:
            with source.open("rb") as reader, tmp.open("wb") as writer:
                shutil.copyfileobj(reader, writer, _CHUNK)
            tmp.replace(path)
        except FileNotFoundError as exc:
            tmp.unlink(missing_ok=True)
            if not source.is_file():
                raise StoreKeyMissing(self.uri, key) from exc
            raise self._fail("download", key, exc) from exc
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._fail("download", key, exc) from exc

    def _walk(self, folder: Path) -> Iterator[str]:
        """Relative keys of the regular files below ``folder`` (no links, no temp files)."""
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue  # temporary files of in-flight writes
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path).relative_to(self.root).as_posix()

    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        check_prefix(prefix)
        folder_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder_part.split("/")) if folder_part else self.root
        try:
            return sorted(key for key in self._walk(start) if key.startswith(prefix))
        except OSError as exc:
            raise self._fail("list", prefix, exc) from exc

    def delete(self, key: str) -> None:
        """Remove the object (absent is fine) and any folders it leaves empty."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return
        except OSError as exc:
            raise self._fail("delete", key, exc) from exc
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()  # only succeeds while empty
            except OSError:
                break
            parent = parent.parent

    def exists(self, key: str) -> bool:
        """Whether a regular file exists for ``key``."""
        path = self._path(key)
        try:
            return stat.S_ISREG(path.stat().st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._fail("exists", key, exc) from exc

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Publish a synced temporary file with ``os.link``: fails if the key exists."""
        target = self._path(key)
        try:
            tmp = self._write_bytes(target, data)
        except OSError as exc:
            raise self._fail("create_exclusive", key, exc) from exc
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._fail("create_exclusive", key, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)
        return True

    # ------------------------------------------------------------ compare-and-swap
    # The tag is the sha256 of the content; a compare-and-swap holds an exclusive flock on a
    # hidden lock file beside the object, which the kernel releases when the holder dies
    # (a kill -9 leaves no stale lock). Works across processes and threads sharing the
    # folder (local filesystems; NFS with lock support). Readers take no lock: replacing
    # is atomic.
    @contextmanager
    def _locked(self, target: Path) -> Iterator[None]:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.parent / f".{target.name}{_LOCK_MARK}", os.O_RDWR | os.O_CREAT,
                     0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _tag(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def _current_tag(self, target: Path) -> str | None:
        try:
            return self._tag(target.read_bytes())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and their sha256 (its tag)."""
        data = self.get(key)
        return data, self._tag(data)

    def put_if_match(self, key: str, data: bytes, expected: str | None) -> bool:
        """Replace the object only if its sha256 is ``expected`` (``None``: absent)."""
        target = self._path(key)
        try:
            with self._locked(target):
                if self._current_tag(target) != expected:
                    return False
                self._write_and_publish(key, target, data)
        except OSError as exc:
            raise self._fail("put_if_match", key, exc) from exc
        return True

    def delete_if_match(self, key: str, expected: str) -> bool:
        """Delete the object only if its sha256 is ``expected``."""
        target = self._path(key)
        try:
            with self._locked(target):
                if self._current_tag(target) != expected:
                    return False
                target.unlink()
        except OSError as exc:
            raise self._fail("delete_if_match", key, exc) from exc
        _fsync_dir(target.parent)
        return True
