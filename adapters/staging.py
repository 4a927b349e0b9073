"""Staging packages from places the operator names, and the registry's verified copies.

:func:`stage_from_uri` copies a package from a ``file://`` folder (only below
``LORASWAP_IMPORT_ROOTS``) or an ``s3://`` prefix into a fresh folder, under the same size
budget and plain-name rules as an upload (:mod:`loraswap.adapters.archive`);
:func:`download_verified` makes the registry's sha256-checked local copy of a version,
published by one rename.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from loraswap.adapters.archive import PLAIN_NAME, Budget, fresh_dest
from loraswap.adapters.package import MANIFEST_FILE, sha256_file
from loraswap.adapters.store import FileSystemStore, ObjectStore, SizedStore, open_store
from loraswap.adapters.store.s3 import S3Store
from loraswap.adapters.validation import ValidationLimits
from loraswap.core.errors import (
    AdapterValidationError,
    ConfigurationError,
    InvalidRequestError,
    PayloadTooLargeError,
    PermissionDeniedError,
    StoreError,
)


def copy_local_package(folder: Path, dest: Path, limits: ValidationLimits) -> Path:
    """Copy the package in a local folder into ``dest``; links and sub-folders are refused."""
    if folder.is_symlink() or not folder.is_dir():
        raise AdapterValidationError(f"{folder} is not a folder")
    budget = Budget(limits)
    with fresh_dest(dest):
        for entry in sorted(folder.iterdir()):
            mode = entry.lstat().st_mode
            if not stat.S_ISREG(mode):
                kind = "link" if stat.S_ISLNK(mode) else "folder or special file"
                raise AdapterValidationError(f"{entry.name} is a {kind}; packages hold only "
                                             "plain files")
            if not PLAIN_NAME.fullmatch(entry.name):
                raise AdapterValidationError(f"{entry.name!r} is not a plain file name")
            budget.admit(entry.name, entry.stat().st_size)
            with entry.open("rb") as source:
                budget.copy(entry.name, source, dest / entry.name, None)
    return dest


def download_store_package(store: ObjectStore, dest: Path, limits: ValidationLimits) -> Path:
    """Download the package stored under a store's root (``s3://bucket/prefix/``) to ``dest``."""
    keys = store.list("")
    if not keys:
        raise AdapterValidationError(f"{store.uri} holds no files")
    budget = Budget(limits)
    with fresh_dest(dest):
        for key in keys:
            if key == "" or key.endswith("/"):
                continue  # folder markers some S3 consoles create
            if "/" in key:
                raise AdapterValidationError(f"{store.uri}/{key} is in a nested folder")
            if not PLAIN_NAME.fullmatch(key):
                raise AdapterValidationError(f"{store.uri}/{key}: {key!r} is not a plain "
                                             "file name")
            # Sizes are checked before downloading where the store can tell them cheaply.
            declared = store.size(key) if isinstance(store, SizedStore) else 0
            budget.admit(key, declared)
            store.download(key, dest / key)
            size = (dest / key).stat().st_size
            budget.total += size
            if size > limits.max_file_bytes or budget.total > limits.max_upload_bytes:
                raise PayloadTooLargeError(f"{store.uri}/{key} is over the size limits")
    return dest


def importable_folder(folder: Path, roots: Sequence[Path]) -> Path:
    """``folder`` with links resolved, if it lies below one of ``roots``; else a 403.

    Containment is checked on the resolved path (a link inside a root that points out of it
    is refused) and before existence, so a refusal says nothing about folders outside.
    """
    if not roots:
        raise PermissionDeniedError(
            "file:// imports are disabled on this server; set LORASWAP_IMPORT_ROOTS to the "
            "folders they may read"
        )
    real = folder.resolve()
    if not any(real.is_relative_to(root.resolve()) for root in roots):
        raise PermissionDeniedError(
            f"{folder} is outside the folders file:// imports may read (LORASWAP_IMPORT_ROOTS)"
        )
    return real


def stage_from_uri(uri: str, dest: Path, limits: ValidationLimits, *,
                   file_roots: Sequence[Path] = (),
                   registry_store: ObjectStore | None = None) -> Path:
    """Copy the package at ``file:///folder`` or ``s3://bucket/prefix/`` into ``dest``.

    A ``file://`` folder must lie below one of ``file_roots`` (none: file imports are off),
    so an import cannot read the store itself or any other folder of the server; an
    ``s3://`` source may not overlap ``registry_store`` (other tenants' versions, captures
    and tokens live there, readable with the server's credentials).
    """
    try:
        source = open_store(uri)
    except ConfigurationError as exc:
        raise InvalidRequestError(str(exc)) from exc
    if isinstance(source, FileSystemStore):
        return copy_local_package(importable_folder(source.root, file_roots), dest, limits)
    _check_not_registry(source, registry_store)
    return download_store_package(source, dest, limits)


def _check_not_registry(source: ObjectStore, registry: ObjectStore | None) -> None:
    """403 when an ``s3://`` source lies in the registry's own bucket and prefix."""
    while registry is not None and hasattr(registry, "inner"):  # an observed store
        registry = registry.inner
    if not (isinstance(source, S3Store) and isinstance(registry, S3Store)):
        return
    if source.bucket == registry.bucket and (source.prefix.startswith(registry.prefix)
                                             or registry.prefix.startswith(source.prefix)):
        raise PermissionDeniedError(
            f"{source.uri} overlaps the registry's own store ({registry.uri}): imports "
            "read packages from elsewhere, never from the registry")


def is_complete_copy(folder: Path, files: Mapping[str, str], raw_manifest: bytes) -> bool:
    """Whether ``folder`` holds exactly this version (same manifest bytes, all files)."""
    try:
        if (folder / MANIFEST_FILE).read_bytes() != raw_manifest:
            return False
    except OSError:
        return False
    return all((folder / file_name).is_file() for file_name in files)


def download_verified(store: ObjectStore, prefix: str, files: Mapping[str, str],
                      raw_manifest: bytes, final: Path) -> Path:
    """Download a stored version into ``final``: sha256-checked, published by one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}.tmp-") as tmp:
        staging = Path(tmp) / "package"
        staging.mkdir()
        for file_name, expected in sorted(files.items()):
            store.download(prefix + file_name, staging / file_name)
            actual = sha256_file(staging / file_name)
            if actual != expected:
                raise StoreError(
                    f"{store.uri}/{prefix}{file_name} has sha256 {actual}, its manifest "
                    f"says {expected}"
                )
        try:
            (staging / MANIFEST_FILE).write_bytes(raw_manifest)
            shutil.rmtree(final, ignore_errors=True)  # an incomplete or stale copy
            staging.rename(final)
        except OSError as exc:
            if is_complete_copy(final, files, raw_manifest):  # another process was faster
                return final
            raise StoreError(f"cannot write the local copy {final}: {exc}") from exc
    return final
