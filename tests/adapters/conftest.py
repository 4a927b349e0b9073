"""Fixtures for the adapters tests: isolated pip, stores (a folder, a real SeaweedFS S3
server) and complete adapter packages for the tiny base model."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from loraswap.adapters.demo import write_random_adapter
from loraswap.adapters.package import (
    MANIFEST_FILE,
    AdapterManifest,
    BaseModelRef,
    LoraSummary,
    TaskKind,
    package_file_digests,
    read_manifest,
    write_manifest,
)
from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import FileSystemStore, ObjectStore, open_store
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import LoraswapError
from tests.s3_server import S3Server


@pytest.fixture
def isolated_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pip (run by fetch) see only the index a test names.

    The machine's pip configuration adds local wheel folders and extra indexes; a test
    about an unreachable or fake index must not be rescued by them.
    """
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # pip then reads no config file
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)


# --- Stores (a folder; a bucket on a real SeaweedFS server) and adapter packages ---------


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> str:
    """One bucket for the adapters tests; each test works under its own prefix."""
    return s3_server.create_bucket(f"adapters-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point boto3's standard environment chain at the test server."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> ObjectStore:
    """A fresh empty store of ``kind`` ("fs" or "s3", the latter via ``open_store``)."""
    if kind == "fs":
        return open_store((tmp_path / f"store-{uuid.uuid4().hex[:8]}").as_uri())
    request.getfixturevalue("s3_env")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/test-{uuid.uuid4().hex}")


@pytest.fixture(params=["fs", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same contract, once on the filesystem and once on S3 (SeaweedFS)."""
    return make_store(request.param, tmp_path, request)


def snapshot(store: ObjectStore) -> dict[str, bytes]:
    """Every key of a store with its bytes (and, for a folder, every file on disk)."""
    found = {key: store.get(key) for key in store.list("")}
    if isinstance(store, FileSystemStore) and store.root.exists():
        found.update({f"<disk>/{p.relative_to(store.root)}": p.read_bytes() if p.is_file()
                      else b"<dir>" for p in store.root.rglob("*")})
    return found


def refused(registry: AdapterRegistry, folder: Path, error: type[LoraswapError],
            match: str, **kwargs: object) -> None:
    """``register`` raises ``error`` matching ``match`` and writes nothing."""
    registry.store.put("adapters/acme/other/state.json", b'{"active": null}')  # non-empty
    before = snapshot(registry.store)
    with pytest.raises(error, match=match):
        registry.register("acme", "chat", folder, **kwargs)  # type: ignore[arg-type]
    assert snapshot(registry.store) == before


@pytest.fixture(scope="session")
def base_fingerprint(tiny_base_dir: Path) -> BaseModelFingerprint:
    """The tiny base model's fingerprint (what packages are validated against)."""
    return BaseModelFingerprint.from_folder(tiny_base_dir)


def seal(folder: Path, **changes: Any) -> Path:
    """(Re)write ``loraswap.json`` with the current file digests and ``changes`` applied."""
    manifest = read_manifest(folder)
    data = manifest.model_dump(mode="json")
    data["files"] = package_file_digests(folder)
    data.update(changes)
    (folder / MANIFEST_FILE).write_text(json.dumps(data, indent=2), encoding="utf-8")
    return folder


PackageBuilder = Callable[..., Path]


@pytest.fixture
def build_package(tiny_base_dir: Path, base_fingerprint: BaseModelFingerprint,
                  tmp_path: Path) -> PackageBuilder:
    """Factory: a complete causal-lm package (PEFT files + ``loraswap.json``) for the base."""

    def factory(name: str = "pkg", *, rank: int = 4,
                targets: Sequence[str] = ("q_proj", "v_proj"), seed: int = 0) -> Path:
        folder = tmp_path / "packages" / name
        write_random_adapter(tiny_base_dir, folder, rank=rank, targets=targets, seed=seed)
        manifest = AdapterManifest(
            task=TaskKind.CAUSAL_LM,
            base_model=BaseModelRef(name=base_fingerprint.name,
                                    weights_sha256=base_fingerprint.weights_sha256),
            lora=LoraSummary(r=rank, alpha=2 * rank, targets=sorted(targets)),
            files=package_file_digests(folder),
        )
        write_manifest(folder, manifest)
        return folder

    return factory
