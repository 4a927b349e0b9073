"""Object stores holding adapter packages and tenants: a local folder or an S3 bucket."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from loraswap.adapters.store.base import (
    ObjectStore,
    ObservedStore,
    SizedStore,
    StoreKeyMissing,
    StoreObserver,
    check_key,
    check_prefix,
    update_object,
)
from loraswap.adapters.store.filesystem import FileSystemStore
from loraswap.adapters.store.s3 import S3Store
from loraswap.core.errors import ConfigurationError, StoreError

__all__ = [
    "FileSystemStore",
    "ObjectStore",
    "ObservedStore",
    "S3Store",
    "SizedStore",
    "StoreKeyMissing",
    "StoreObserver",
    "check_key",
    "check_prefix",
    "open_store",
    "update_object",
]


def open_store(uri: str, *, endpoint_url: str | None = None) -> ObjectStore:
    """Open ``file:///abs/path`` or ``s3://bucket/prefix``.

    For S3 the endpoint is ``endpoint_url`` if given, else boto3's own configuration
    (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``); credentials and region come from
    boto3's normal chain. Raises :class:`ConfigurationError` naming a malformed URI.
    """
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigurationError(
                f"store URI {uri!r} is invalid: use file:///absolute/path (three slashes)"
            )
        if parts.query or parts.fragment:
            raise ConfigurationError(f"store URI {uri!r} must not have a query or fragment")
        path = Path(unquote(parts.path))
        if ".." in path.parts:
            raise ConfigurationError(f"store URI {uri!r} must not contain '..'")
        return FileSystemStore(path)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigurationError(f"store URI {uri!r} is invalid: use s3://bucket/prefix")
        if parts.query or parts.fragment:
            raise ConfigurationError(f"store URI {uri!r} must not have a query or fragment")
        prefix = unquote(parts.path).strip("/")
        if prefix:
            try:
                check_key(prefix)
            except StoreError as exc:
                raise ConfigurationError(f"store URI {uri!r} has an invalid prefix: {exc}") from exc
        return S3Store(parts.netloc, prefix, endpoint_url=endpoint_url)
    raise ConfigurationError(
        f"store URI {uri!r} is not supported: use file:///absolute/path or s3://bucket/prefix"
    )
