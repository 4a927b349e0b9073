"""One contract, two backends: a folder and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from loraswap.adapters.store import (
    FileSystemStore,
    ObjectStore,
    ObservedStore,
    S3Store,
    StoreKeyMissing,
    open_store,
)
from loraswap.core.errors import ConfigurationError, NotFoundError, StoreError
from tests.adapters.conftest import make_store

pytestmark = pytest.mark.integration  # the "s3" parameter runs a real SeaweedFS process

BAD_KEYS = ["../escape", "a/../../b", "/abs/key", "a//b", "a/./b", ".hidden", "a/.tmp", "",
            "back\\slash", "sp ace"]


def test_put_get_overwrite_roundtrip(store: ObjectStore) -> None:
    store.put("a/b/c.json", b'{"x": 1}')
    assert store.get("a/b/c.json") == b'{"x": 1}'
    store.put("a/b/c.json", b"second")
    assert store.get("a/b/c.json") == b"second"
    store.put("empty", b"")
    assert store.get("empty") == b""


def test_missing_key_is_not_found_and_names_store_and_key(store: ObjectStore,
                                                          tmp_path: Path) -> None:
    with pytest.raises(StoreKeyMissing) as caught:
        store.get("no/such/key")
    assert isinstance(caught.value, NotFoundError)
    assert "no/such/key" in str(caught.value) and store.uri in str(caught.value)
    with pytest.raises(StoreKeyMissing):
        store.download("no/such/key", tmp_path / "never-written")
    assert not store.exists("no/such/key")
    assert list(tmp_path.iterdir()) == []


def test_list_is_sorted_and_uses_plain_prefixes(store: ObjectStore) -> None:
    for key in ["t/b/2", "t/a/1", "t/a/10", "t/ab", "u/x", "t/a/0"]:
        store.put(key, key.encode())
    assert store.list("t/a/") == ["t/a/0", "t/a/1", "t/a/10"]
    assert store.list("t/a") == ["t/a/0", "t/a/1", "t/a/10", "t/ab"]
    assert store.list("") == sorted(["t/b/2", "t/a/1", "t/a/10", "t/ab", "u/x", "t/a/0"])
    assert store.list("nothing/") == []


def test_delete_and_exists(store: ObjectStore) -> None:
    store.put("d/x", b"1")
    store.put("d/y", b"2")
    assert store.exists("d/x")
    store.delete("d/x")
    assert not store.exists("d/x")
    assert store.list("d/") == ["d/y"]
    store.delete("d/x")  # deleting an absent key is fine
    with pytest.raises(StoreKeyMissing):
        store.get("d/x")


def test_create_exclusive_only_once(store: ObjectStore) -> None:
    assert store.create_exclusive("claims/00000001", b"first")
    assert not store.create_exclusive("claims/00000001", b"second")
    assert store.get("claims/00000001") == b"first"


CONCURRENT_WRITERS = 16  # docs/adapter-format.md states this number


def test_create_exclusive_race_has_one_winner(store: ObjectStore) -> None:
    barrier = threading.Barrier(CONCURRENT_WRITERS)
    wins: list[int] = []

    def contend(i: int) -> None:
        barrier.wait()
        if store.create_exclusive("race/key", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(CONCURRENT_WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert store.get("race/key") == str(wins[0]).encode()


def test_put_file_and_download_roundtrip(store: ObjectStore, tmp_path: Path) -> None:
    payload = os.urandom(3 * 2**20 + 17)
    source = tmp_path / "source.bin"
    source.write_bytes(payload)
    store.put_file("blobs/big", source)
    target = tmp_path / "target.bin"
    target.write_bytes(b"old content")
    store.download("blobs/big", target)
    assert target.read_bytes() == payload
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_readers_never_see_a_partial_object(store: ObjectStore) -> None:
    first, second = b"a" * (2 * 2**20), b"b" * (2 * 2**20)
    store.put("atomic/obj", first)
    stop = threading.Event()
    torn: list[int] = []

    def check() -> None:
        while not stop.is_set():
            data = store.get("atomic/obj")
            if data not in (first, second):
                torn.append(len(data))

    reader = threading.Thread(target=check)
    reader.start()
    try:
        for i in range(10):
            store.put("atomic/obj", second if i % 2 == 0 else first)
    finally:
        stop.set()
        reader.join()
    assert torn == []
    assert store.get("atomic/obj") == first


def test_a_write_is_invisible_until_it_is_published(tmp_path: Path) -> None:
    """Deterministic, where the threaded test above is statistical: paused by the
    store's own pause-before-publish hook with the new bytes fully written, a reader (and a
    listing) still sees the old object whole, for a plain write and a compare-and-swap;
    once published, the new one whole. A store that wrote in place fails here every time."""
    store = FileSystemStore(tmp_path / "store")
    old, new = b"o" * (2 * 2**20), b"n" * (2 * 2**20)
    store.put("atomic/obj", old)
    seen: list[tuple[str, bytes, list[str]]] = []

    def read_mid_write(key: str) -> None:
        seen.append((key, store.get("atomic/obj"), store.list("atomic/")))

    store.before_publish = read_mid_write
    store.put("atomic/obj", new)
    _, tag = store.get_versioned("atomic/obj")
    assert store.put_if_match("atomic/obj", old, tag)
    store.before_publish = None
    assert [(key, data == old if i == 0 else data == new, keys)
            for i, (key, data, keys) in enumerate(seen)] == [
        ("atomic/obj", True, ["atomic/obj"]), ("atomic/obj", True, ["atomic/obj"])]
    assert store.get("atomic/obj") == old


def test_an_s3_write_is_invisible_until_the_server_has_it_whole(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The S3 store's counterpart of the test above, on the real SeaweedFS server: before
    every request the store sends for the object being written (boto3's ``before-send``
    event, the last moment before the server sees it), a reader and a listing still see
    the old object whole, for a plain write and a compare-and-swap; afterwards, the new one.
    A store that deleted first, wrote in pieces or wrote under a temporary key and renamed
    would show a missing, partial or extra object at one of those pauses."""
    store = make_store("s3", tmp_path, request)
    assert isinstance(store, S3Store)
    old, new = b"o" * (2 * 2**20), b"n" * (2 * 2**20)
    store.put("atomic/obj", old)
    reader = S3Store(store.bucket, store.prefix)  # its own client: no hook on its reads
    phase = ["put"]
    seen: list[tuple[str, str, list[str]]] = []

    def read_before_send(request: Any, **_: Any) -> None:
        if request.method in ("PUT", "POST", "DELETE"):
            data = reader.get("atomic/obj")
            state = "old" if data == old else "new" if data == new else f"{len(data)} bytes"
            seen.append((phase[0], state, reader.list("atomic/")))

    store.client.meta.events.register("before-send.s3", read_before_send)
    try:
        store.put("atomic/obj", new)
        _, tag = store.get_versioned("atomic/obj")
        phase[0] = "swap"
        assert store.put_if_match("atomic/obj", old, tag)
    finally:
        store.client.meta.events.unregister("before-send.s3", read_before_send)
    assert {p for p, _, _ in seen} == {"put", "swap"}, seen
    assert [(p, state, keys) for p, state, keys in seen] == [
        (p, "old" if p == "put" else "new", ["atomic/obj"]) for p, _, _ in seen]
    assert store.get("atomic/obj") == old


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused_by_every_operation(store: ObjectStore, key: str,
                                                    tmp_path: Path) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.get(key), lambda: store.put(key, b"x"), lambda: store.exists(key),
        lambda: store.delete(key), lambda: store.create_exclusive(key, b"x"),
        lambda: store.download(key, tmp_path / "out"),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="invalid object key"):
            call()
    assert store.list("") == []


def test_filesystem_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "root")
    store.put("a/b", b"1")
    assert store.create_exclusive("a/c", b"2")
    assert not store.create_exclusive("a/c", b"3")
    assert sorted(p.name for p in (tmp_path / "root" / "a").iterdir()) == ["b", "c"]
    store.delete("a/b")
    store.delete("a/c")
    assert list((tmp_path / "root").iterdir()) == []  # emptied folders are removed


def test_filesystem_errors_name_store_and_key(tmp_path: Path) -> None:
    (tmp_path / "root").write_text("a file where the store folder should be")
    store = FileSystemStore(tmp_path / "root")
    with pytest.raises(StoreError) as caught:
        store.put("a/b", b"1")
    assert store.uri in str(caught.value) and "'a/b'" in str(caught.value)
    assert not isinstance(caught.value, NotFoundError)


def test_s3_errors_name_store_and_key_when_unreachable(s3_env: None) -> None:
    store = S3Store("bucket", "prefix", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StoreError) as caught:
        store.get("some/key")
    assert "s3://bucket/prefix" in str(caught.value) and "'some/key'" in str(caught.value)


def test_open_store_reads_uris(tmp_path: Path, s3_env: None, s3_bucket: str) -> None:
    fs = open_store((tmp_path / "x").as_uri())
    assert isinstance(fs, FileSystemStore) and fs.root == tmp_path / "x"
    s3 = open_store(f"s3://{s3_bucket}/some/prefix/")
    assert isinstance(s3, S3Store) and s3.uri == f"s3://{s3_bucket}/some/prefix"
    s3.put("k", b"v")  # endpoint and credentials came from the AWS_* environment
    assert open_store(f"s3://{s3_bucket}/some").list("prefix/") == ["prefix/k"]
    for bad in ["file://relative/path", "file:relative", "http://host/x", "s3:///prefix",
                "s3://bucket/../x", "/abs/path", f"{(tmp_path / 'x').as_uri()}?q=1"]:
        with pytest.raises(ConfigurationError, match="store URI"):
            open_store(bad)


def test_observed_store_reports_each_operation(tmp_path: Path) -> None:
    seen: list[tuple[str, bool]] = []

    class Recorder:
        def observe_store(self, operation: str, seconds: float, ok: bool) -> None:
            assert seconds >= 0
            seen.append((operation, ok))

    store = ObservedStore(FileSystemStore(tmp_path / "root"), Recorder())
    store.put("k", b"v")
    store.get("k")
    with pytest.raises(StoreKeyMissing):
        store.get("missing")
    with pytest.raises(StoreError):
        store.get("../bad")
    assert seen == [("put", True), ("get", True), ("get", True), ("get", False)]


class _NoConditionalPut:
    """A boto3 S3 client whose server answers 501 NotImplemented to ``If-None-Match``."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.conditional_attempts = 0

    def put_object(self, **kwargs: Any) -> Any:
        if "IfNoneMatch" in kwargs:
            self.conditional_attempts += 1
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "no"},
                               "ResponseMetadata": {"HTTPStatusCode": 501}}, "PutObject")
        return self._client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_s3_without_conditional_put_falls_back_once_detected(
        s3_env: None, s3_bucket: str) -> None:
    """A server answering 501 to a conditional PUT: detected on the first exclusive create,
    which still succeeds; later creates use HEAD-then-PUT without asking again, and an
    existing key is still refused."""
    client = _NoConditionalPut(boto3.session.Session().client("s3"))
    store = S3Store(s3_bucket, f"no-conditional-{uuid.uuid4().hex}", client=client)
    assert store.create_exclusive("claims/00000001", b"first")
    assert store.get("claims/00000001") == b"first"
    assert not store.create_exclusive("claims/00000001", b"second")
    assert store.get("claims/00000001") == b"first"
    assert store.create_exclusive("claims/00000002", b"other")
    assert client.conditional_attempts == 1
