"""Training data beside adapter packages in the store, and the Parquet batches of capture.

``loraswap train --push`` copies the training (and test) data files into the store under
``training-data/{tenant}/{adapter}/{sha256[:16]}-{file name}`` (content-addressed: the
same file is stored once) and records the keys in the package manifest's
``training.data_store``, so a retraining run finds the data the active version was
trained on. Shared by the service (admin upload route, capture) and training (the run).
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

import httpx

from loraswap.adapters.store.base import ObjectStore
from loraswap.core.errors import InvalidRequestError, StoreError
from loraswap.core.identity import SAFE_NAME

DATA_PREFIX = "training-data/"
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,100}$")


def data_key(tenant: str, adapter: str, filename: str, digest: str) -> str:
    """The store key of one training data file (names checked)."""
    if not (SAFE_NAME.fullmatch(tenant) and SAFE_NAME.fullmatch(adapter)):
        raise InvalidRequestError("invalid tenant or adapter name")
    if not _FILE_NAME.fullmatch(filename):
        raise InvalidRequestError(f"invalid training data file name {filename!r}")
    return f"{DATA_PREFIX}{tenant}/{adapter}/{digest[:16]}-{filename}"


def store_bytes(store: ObjectStore, tenant: str, adapter: str, filename: str,
                data: bytes) -> str:
    """Put one data file into the store; its key."""
    key = data_key(tenant, adapter, filename, hashlib.sha256(data).hexdigest())
    if not store.exists(key):
        store.put(key, data)
    return key


def upload_to_store(store: ObjectStore, tenant: str, adapter: str, path: Path,
                    filename: str | None = None) -> str:
    """Put a local data file into the store; its key."""
    return store_bytes(store, tenant, adapter, filename or path.name, path.read_bytes())


def upload_via_service(server: str, admin_token: str, tenant: str, adapter: str,
                       files: dict[str, Path], timeout: float = 300) -> dict[str, str]:
    """Upload data files through ``PUT /admin/training-data/{tenant}/{adapter}/{file}``;
    ``role -> store key``."""
    keys: dict[str, str] = {}
    with httpx.Client(base_url=server.rstrip("/"), timeout=timeout,
                      headers={"Authorization": f"Bearer {admin_token}"}) as client:
        for role, path in files.items():
            response = client.put(f"/admin/training-data/{tenant}/{adapter}/{path.name}",
                                  content=path.read_bytes())
            if response.status_code != 200:
                raise StoreError(f"uploading {path} failed: {response.status_code} "
                                 f"{response.text[:300]}")
            keys[role] = str(response.json()["key"])
    return keys


def read_parquet_batches(store: ObjectStore, prefix: str) -> list[dict[str, Any]]:
    """Every row of every Parquet batch under ``prefix``, oldest batch first."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for key in sorted(store.list(prefix)):
        if key.endswith(".parquet"):
            rows.extend(pq.read_table(io.BytesIO(store.get(key))).to_pylist())
    return rows
