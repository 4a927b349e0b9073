"""Untrusted uploads onto local disk safely: archives and individually uploaded files.

Uploads (.tar, .tar.gz, .zip, or single files) are not trusted: member names must be plain
relative names (no absolute paths, no ``..``, no drive letters or backslashes), only regular
files are extracted (links, devices and FIFOs are refused), at most one top-level folder is
allowed (and stripped), duplicates are refused, and sizes are limited twice, by the sizes
the archive declares and by the bytes actually written, so a decompression bomb stops at
the limit. Members are written by this module itself, never by ``tarfile``/``zipfile``
extraction helpers. Packages read from a folder or a store, and the registry's verified
local copies, are staged by :mod:`loraswap.adapters.staging` with the same budget."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from loraswap.adapters.validation import ALLOWED_FILES, ValidationLimits
from loraswap.core.errors import (
    AdapterValidationError,
    PayloadTooLargeError,
)

_CHUNK = 1 << 20
# One plain file name of a package (see validation.ALLOWED_FILES for which are accepted).
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_GZIP_MAGIC = b"\x1f\x8b"
# Bytes of tar extension headers (GNU long names/links, pax records) allowed in one archive.
# tarfile reads each of them whole into memory before the member it describes, so they are
# budgeted before reading: a package's names are short plain names (at most 128
# characters), and a few hundred bytes of pax records per member are normal.
MAX_TAR_HEADER_BYTES = 64 * 1024
_EXTENSION_HEADERS = frozenset({tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                                tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE})
_SHOWN_NAME = 80


def _shown(name: str) -> str:
    """A member name for messages, cut short: hostile names can be megabytes long."""
    return repr(name if len(name) <= _SHOWN_NAME else name[:_SHOWN_NAME] + "...")


@dataclass
class Budget:
    """Files and bytes written so far, checked against the limits."""

    limits: ValidationLimits
    files: int = 0
    total: int = 0
    seen: set[str] = field(default_factory=set)

    def admit(self, name: str, declared: int) -> None:
        """Account for one more member before any of its bytes are written."""
        if name in self.seen:
            raise AdapterValidationError(f"archive holds {name!r} twice")
        self.seen.add(name)
        self.files += 1
        if self.files > self.limits.max_files:
            raise PayloadTooLargeError(
                f"upload holds more than {self.limits.max_files} files"
            )
        if declared > self.limits.max_file_bytes:
            raise PayloadTooLargeError(
                f"{name} is {declared} bytes, over the limit of "
                f"{self.limits.max_file_bytes} bytes per file"
            )
        if self.total + declared > self.limits.max_upload_bytes:
            raise PayloadTooLargeError(
                f"upload is over the limit of {self.limits.max_upload_bytes} bytes"
            )

    def copy(self, name: str, source: IO[bytes], target: Path, declared: int | None) -> None:
        """Copy ``source`` to ``target``, counting bytes; stop at the first byte too many."""
        written = 0
        with target.open("xb") as sink:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                self.total += len(chunk)
                if declared is not None and written > declared:
                    raise AdapterValidationError(
                        f"{name} holds more bytes than the archive declares ({declared})"
                    )
                if written > self.limits.max_file_bytes:
                    raise PayloadTooLargeError(
                        f"{name} is over the limit of {self.limits.max_file_bytes} bytes "
                        "per file"
                    )
                if self.total > self.limits.max_upload_bytes:
                    raise PayloadTooLargeError(
                        f"upload is over the limit of {self.limits.max_upload_bytes} bytes"
                    )
                sink.write(chunk)


def _member_parts(raw_name: str) -> list[str]:
    """Split a member name into checked path segments (``./`` prefixes dropped)."""
    if not raw_name or "\\" in raw_name or "\x00" in raw_name:
        raise AdapterValidationError(f"archive member name {_shown(raw_name)} is not allowed")
    if raw_name.startswith("/") or re.match(r"^[A-Za-z]:", raw_name):
        raise AdapterValidationError(f"archive member {_shown(raw_name)} has an absolute path")
    parts = [part for part in raw_name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise AdapterValidationError(f"archive member {_shown(raw_name)} contains '..'")
    for part in parts:
        if not PLAIN_NAME.fullmatch(part):
            raise AdapterValidationError(f"archive member {_shown(raw_name)}: {_shown(part)} "
                                         "is not a plain file or folder name")
    return parts


class _Layout:
    """Where members go: flat, or all inside one top-level folder (which is stripped)."""

    def __init__(self) -> None:
        self.top: str | None = None
        self.flat = False

    def file_name(self, raw_name: str) -> str:
        parts = _member_parts(raw_name)
        if not parts:
            raise AdapterValidationError(f"archive member {_shown(raw_name)} has no file name")
        if len(parts) > 2:
            raise AdapterValidationError(
                f"archive member {_shown(raw_name)} is in a nested folder; put the package files "
                "at the top or in one folder"
            )
        if len(parts) == 1:
            self.flat = True
        else:
            self._enter(parts[0], raw_name)
        if self.flat and self.top is not None:
            raise AdapterValidationError(
                "archive mixes files at the top with files in folder "
                f"{self.top!r}; use one layout"
            )
        return parts[-1]

    def folder(self, raw_name: str) -> None:
        # Folder entries carry nothing; only the files decide the layout.
        if len(_member_parts(raw_name)) > 1:
            raise AdapterValidationError(f"archive holds nested folder {_shown(raw_name)}")

    def _enter(self, top: str, raw_name: str) -> None:
        if self.top is None:
            self.top = top
        elif self.top != top:
            raise AdapterValidationError(
                f"archive has more than one top-level folder ({self.top!r}, "
                f"{_shown(raw_name)}); put the package files in one folder"
            )


@dataclass
class _HeaderBudget:
    """Extension-header bytes (long names, pax records) read so far from one archive."""

    spent: int = 0

    def admit(self, header: tarfile.TarInfo) -> None:
        """Refuse a header before tarfile reads its payload into memory."""
        if header.type == tarfile.GNUTYPE_SPARSE:
            raise AdapterValidationError("archive holds a sparse file; only plain files are "
                                         "allowed")
        if header.type not in _EXTENSION_HEADERS:
            return
        self.spent += header.size
        if self.spent > MAX_TAR_HEADER_BYTES:
            raise PayloadTooLargeError(
                f"archive's extension headers (long names, pax records) are over the limit "
                f"of {MAX_TAR_HEADER_BYTES} bytes"
            )


def _budgeted_tarinfo(budget: _HeaderBudget) -> type[tarfile.TarInfo]:
    """A TarInfo class that checks each header against ``budget`` before processing it.

    ``tarfile`` calls ``_proc_member`` for every header block, including the chained ones
    that carry a GNU long name or pax records, right before it reads their payload.
    """

    class BudgetedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
            budget.admit(self)
            return super()._proc_member(tarfile)  # type: ignore[misc, no-any-return]

    return BudgetedTarInfo


def _extract_tar(archive: BinaryIO, dest: Path, budget: Budget) -> None:
    layout = _Layout()
    try:
        # Stream mode ("r|*"): members are read in order and never seeked past, so work
        # stays bounded by the limits even for a compressed bomb; extension headers are
        # budgeted before tarfile reads them.
        with tarfile.open(fileobj=archive, mode="r|*",
                          tarinfo=_budgeted_tarinfo(_HeaderBudget())) as tar:
            for member in tar:
                if member.isdir():
                    layout.folder(member.name)
                    continue
                if not member.isreg():
                    kind = "link" if member.issym() or member.islnk() else "special file"
                    raise AdapterValidationError(
                        f"archive member {_shown(member.name)} is a {kind}; only plain files are "
                        "allowed"
                    )
                name = layout.file_name(member.name)
                budget.admit(name, member.size)
                source = tar.extractfile(member)
                if source is None:
                    raise AdapterValidationError(
                        f"archive member {_shown(member.name)} is unreadable")
                with source:
                    budget.copy(name, source, dest / name, member.size)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise AdapterValidationError(f"archive is not a readable tar file: {exc}") from exc


def _extract_zip(archive: BinaryIO, dest: Path, budget: Budget) -> None:
    layout = _Layout()
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                mode = info.external_attr >> 16
                if info.is_dir():
                    layout.folder(info.filename)
                    continue
                # Zips made on Windows carry no file type (0); any other type but a
                # regular file (symlink, device) is refused.
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                    kind = "link" if stat.S_ISLNK(mode) else "special file"
                    raise AdapterValidationError(
                        f"archive member {_shown(info.filename)} is a {kind}; only plain files "
                        "are allowed"
                    )
                name = layout.file_name(info.filename)
                if info.flag_bits & 0x1:  # zipfile would ask for a password
                    raise AdapterValidationError(
                        f"archive member {_shown(info.filename)} is encrypted; upload it "
                        "without a password"
                    )
                budget.admit(name, info.file_size)
                with bundle.open(info) as source:
                    budget.copy(name, source, dest / name, info.file_size)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
            OSError) as exc:
        raise AdapterValidationError(f"archive is not a readable zip file: {exc}") from exc


@contextmanager
def fresh_dest(dest: Path) -> Iterator[None]:
    """Create ``dest`` (it must be absent or empty); remove what was written on failure."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise AdapterValidationError(f"{dest} must be an empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for child in dest.iterdir():
            child.unlink(missing_ok=True)
        raise


def extract_upload(archive: Path | BinaryIO, dest: Path, limits: ValidationLimits) -> Path:
    """Unpack a ``.tar``, ``.tar.gz`` or ``.zip`` package into ``dest`` (a new folder).

    ``archive`` is a path or a seekable binary file (an upload as the server spooled it,
    read where it lies rather than copied first). The format is recognised from the
    content, not the name. Returns ``dest``, which then holds the package files flat, ready
    for :func:`loraswap.adapters.validation.validate_package`.
    """
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(archive.open("rb")) if isinstance(archive, Path) \
            else archive
        size = stream.seek(0, os.SEEK_END)
        if size > limits.max_upload_bytes:
            raise PayloadTooLargeError(
                f"upload is {size} bytes, over the limit of {limits.max_upload_bytes} bytes"
            )
        stream.seek(0)
        magic = stream.read(4)
        stream.seek(0)
        is_tar = magic.startswith(_GZIP_MAGIC) or tarfile.is_tarfile(stream)
        stream.seek(0)
        budget = Budget(limits)
        with fresh_dest(dest):
            if magic.startswith(b"PK"):
                _extract_zip(stream, dest, budget)
            elif is_tar:
                _extract_tar(stream, dest, budget)
            else:
                raise AdapterValidationError(
                    "upload is not a .tar, .tar.gz or .zip archive"
                )
            if budget.files == 0:
                raise AdapterValidationError("archive holds no files")
    return dest


def write_uploaded_files(
    files: list[tuple[str, BinaryIO]], dest: Path, limits: ValidationLimits
) -> Path:
    """Write individually uploaded package files (multipart form) into ``dest``.

    Each file name must be one of the package's plain file names (``adapter_config.json``,
    ``adapter_model.safetensors``, ``profile.json``, ``loraswap.json``).
    """
    budget = Budget(limits)
    with fresh_dest(dest):
        if not files:
            raise AdapterValidationError("no files uploaded")
        for filename, stream in files:
            if filename not in ALLOWED_FILES:
                raise AdapterValidationError(
                    f"uploaded file name {filename!r} is not a package file (expected "
                    f"{', '.join(sorted(ALLOWED_FILES))})"
                )
            budget.admit(filename, 0)
            budget.copy(filename, stream, dest / filename, None)
    return dest
