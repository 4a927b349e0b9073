"""Object store on S3 or an S3-compatible server (SeaweedFS, MinIO, ...).

The endpoint comes from the ``endpoint_url`` argument, else from boto3's own configuration
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, the shared config file); credentials and
region come from boto3's normal chain. A single PUT is atomic on S3: readers see the old
or the new object. :meth:`S3Store.create_exclusive` uses a conditional PUT
(``If-None-Match: *``); a server that does not implement it (HTTP 501) is detected once and
then served by a documented best-effort fallback (HEAD, then PUT), which can let two
concurrent writers both believe they won.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from loraswap.adapters.store.base import StoreKeyMissing, check_key, check_prefix
from loraswap.core.errors import StoreError

logger = logging.getLogger(__name__)

T = TypeVar("T")
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_PRECONDITION_CODES = frozenset({"412", "PreconditionFailed"})
# 409: another conditional write to the same key is in flight; AWS asks to retry.
_CONFLICT_CODES = frozenset({"409", "ConditionalRequestConflict", "OperationAborted"})
_UNSUPPORTED_CODES = frozenset({"501", "NotImplemented"})
_CONFLICT_RETRIES = 3
# Files above this size are uploaded in parts; S3 publishes the object only when complete.
_TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, use_threads=False)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> str:
    return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _is(exc: ClientError, codes: frozenset[str]) -> bool:
    return _error_code(exc) in codes or _status(exc) in codes


class S3Store:
    """``s3://bucket/prefix``: keys live under ``prefix/`` in ``bucket``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        client: Any | None = None,
    ) -> None:
        if not bucket:
            raise StoreError("S3 store needs a bucket name (s3://bucket/prefix)")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60
        )
        # boto3 clients are thread-safe; sessions are not, so each store owns one session.
        self.client: Any = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, config=config
        )
        self._conditional_put: bool | None = None

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r})"

    def _object(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _wrap(self, operation: str, key: str, exc: Exception) -> Exception:
        """The loraswap error for a backend failure, naming the store and the key."""
        if isinstance(exc, ClientError) and _is(exc, _MISSING_CODES):
            return StoreKeyMissing(self.uri, key)
        return StoreError(f"{self.uri}: {operation} {key!r} failed: {exc}")

    def _call(self, operation: str, key: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._wrap(operation, key, exc) from exc

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`StoreKeyMissing` if absent."""
        name = self._object(key)

        def read() -> bytes:
            body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return self._call("get", key, read)

    def size(self, key: str) -> int:
        """Size of the object in bytes (HEAD request)."""
        name = self._object(key)
        head = self._call("size", key, lambda: self.client.head_object(Bucket=self.bucket,
                                                                        Key=name))
        return int(head["ContentLength"])

    def put(self, key: str, data: bytes) -> None:
        """One PUT: atomic on S3."""
        name = self._object(key)
        self._call("put", key, lambda: self.client.put_object(Bucket=self.bucket, Key=name,
                                                              Body=data))

    def put_file(self, key: str, path: Path) -> None:
        """Upload a file (multipart above 64 MiB; visible only once complete)."""
        name = self._object(key)
        self._call("put_file", key, lambda: self.client.upload_file(
            str(path), self.bucket, name, Config=_TRANSFER))

    def download(self, key: str, path: Path) -> None:
        """Download to a temporary file beside ``path``, then rename it into place."""
        name = self._object(key)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
        try:
            self._call("download", key, lambda: self.client.download_file(
                self.bucket, name, str(tmp), Config=_TRANSFER))
            tmp.replace(path)
        except OSError as exc:
            raise StoreError(f"{self.uri}: download {key!r} failed: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        check_prefix(prefix)

        def collect() -> list[str]:
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    keys.append(str(item["Key"])[len(self.prefix):])
            return sorted(keys)

        return self._call("list", prefix or "/", collect)

    def delete(self, key: str) -> None:
        """Remove the object (absent is fine)."""
        name = self._object(key)
        try:
            self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket,
                                                                        Key=name))
        except StoreKeyMissing:
            return

    def exists(self, key: str) -> bool:
        """Whether the object exists (HEAD request)."""
        name = self._object(key)
        try:
            self._call("exists", key, lambda: self.client.head_object(Bucket=self.bucket,
                                                                      Key=name))
        except StoreKeyMissing:
            return False
        return True

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Conditional PUT (``If-None-Match: *``); ``False`` if the key already existed."""
        name = self._object(key)
        if self._conditional_put is False:
            return self._create_best_effort(key, data)
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=data, IfNoneMatch="*")
            except ClientError as exc:
                if _is(exc, _PRECONDITION_CODES):
                    self._conditional_put = True
                    return False
                if _is(exc, _CONFLICT_CODES):
                    time.sleep(0.05 * (attempt + 1))
                    continue
                if _is(exc, _UNSUPPORTED_CODES):
                    logger.warning(
                        "%s does not support conditional PUT (If-None-Match); exclusive "
                        "creation falls back to a racy HEAD-then-PUT", self.uri)
                    self._conditional_put = False
                    return self._create_best_effort(key, data)
                raise self._wrap("create_exclusive", key, exc) from exc
            except (BotoCoreError, OSError) as exc:
                raise self._wrap("create_exclusive", key, exc) from exc
            self._conditional_put = True
            return True
        # Still conflicting: someone else is writing this key right now, so it exists.
        return False

    def _create_best_effort(self, key: str, data: bytes) -> bool:
        """Fallback for servers without conditional PUT: HEAD, then PUT (racy)."""
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    # ------------------------------------------------------------ compare-and-swap
    # The tag is the ETag; writes are conditional PUT / DELETE (If-Match, If-None-Match: *),
    # which AWS S3 and SeaweedFS 4.x honour (tested). 409 (another conditional write in
    # flight) and 412 (precondition failed) both mean "lost the race".
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its ETag."""
        name = self._object(key)

        def read() -> tuple[bytes, str]:
            answer = self.client.get_object(Bucket=self.bucket, Key=name)
            body = answer["Body"]
            try:
                return bytes(body.read()), str(answer["ETag"])
            finally:
                body.close()

        return self._call("get", key, read)

    def _conditional(self, operation: str, key: str, call: Callable[[], object]) -> bool:
        try:
            call()
        except ClientError as exc:
            if _is(exc, _PRECONDITION_CODES) or _is(exc, _CONFLICT_CODES) or _is(
                    exc, _MISSING_CODES):
                return False
            if _is(exc, _UNSUPPORTED_CODES):
                raise StoreError(f"{self.uri} does not support conditional writes "
                                 f"(If-Match), which {operation} {key!r} needs") from exc
            raise self._wrap(operation, key, exc) from exc
        except (BotoCoreError, OSError) as exc:
            raise self._wrap(operation, key, exc) from exc
        return True

    def put_if_match(self, key: str, data: bytes, expected: str | None) -> bool:
        """Conditional PUT: ``If-Match: expected`` (``If-None-Match: *`` when ``None``)."""
        name = self._object(key)
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        return self._conditional("put_if_match", key, lambda: self.client.put_object(
            Bucket=self.bucket, Key=name, Body=data, **condition))

    def delete_if_match(self, key: str, expected: str) -> bool:
        """Conditional DELETE (``If-Match: expected``)."""
        name = self._object(key)
        return self._conditional("delete_if_match", key, lambda: self.client.delete_object(
            Bucket=self.bucket, Key=name, IfMatch=expected))
