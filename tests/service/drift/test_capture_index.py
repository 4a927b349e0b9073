"""The capture writer and its batched index: O(batches) store writes, lookups by id after a
restart and from another replica, bounded lookups and memory, a request path that never
waits for the store."""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from loraswap.adapters.store import ObjectStore, open_store
from loraswap.adapters.store.filesystem import FileSystemStore
from loraswap.core.errors import StoreError
from loraswap.core.identity import AdapterVersionRef
from loraswap.jobs.training_data import read_parquet_batches
from loraswap.service.api.answers import new_request_id
from loraswap.service.drift.capture import CaptureWriter
from loraswap.service.drift.capture_index import (
    INDEX_PREFIX,
    CapturedPrediction,
    CaptureIndex,
    index_bucket,
)
from loraswap.service.drift.handoff import Handoff
from loraswap.service.drift.records import PredictionRecord

REF = AdapterVersionRef.parse("acme/sentiment@1")


class CountingStore(FileSystemStore):
    """A filesystem store that counts its operations by kind and key prefix."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: Counter[tuple[str, str]] = Counter()

    def put(self, key: str, data: bytes) -> None:
        self.calls["put", key.split("/")[0]] += 1
        super().put(key, data)

    def get(self, key: str) -> bytes:
        self.calls["get", key.split("/")[0]] += 1
        return super().get(key)

    def list(self, prefix: str) -> list[str]:
        self.calls["list", prefix.split("/")[0]] += 1
        return super().list(prefix)


def answer(prediction_id: str, inputs: int = 1, ref: AdapterVersionRef = REF,
           ) -> list[PredictionRecord]:
    return [PredictionRecord(
        prediction_id=prediction_id, index=i, ref=ref, task="seq-cls",
        input_text=f"text {prediction_id} {i}", input_tokens=3,
        output={"label": "pos", "scores": {"pos": 0.9, "neg": 0.1}}, predicted_label="pos",
        confidence=0.9) for i in range(inputs)]


def writer(store: ObjectStore, share: float = 1.0,
           rng: random.Random | None = None) -> CaptureWriter:
    capture = CaptureWriter(store, lambda tenant: share if tenant == "acme" else 0.0,
                            batch_rows=64, flush_seconds=600, poll_seconds=0.01, rng=rng)
    capture.start()
    return capture


def stamped_id(seconds: int, serial: int) -> str:
    """An answer id minted at ``seconds`` (as new_request_id makes them)."""
    return f"pred-{seconds:08x}{serial:016x}"


def test_a_thousand_captured_inputs_cost_batches_of_writes_not_one_per_input(
        tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    capture = writer(store)
    ids = [new_request_id("pred") for _ in range(500)]
    for prediction_id in ids:
        capture.submit(answer(prediction_id, inputs=2))  # 1,000 inputs
    capture.flush()
    capture.stop()

    rows = read_parquet_batches(store, "captures/acme/sentiment/")
    assert len(rows) == 1000
    # 1,000 inputs in rows of 64: 16 Parquet batches and about as many index objects (one
    # more per minute bucket the ids span); one object per input would be 1,000.
    assert store.calls["put", "captures"] == 16
    assert store.calls["put", "capture-index"] <= 16 + 2
    assert len(store.list(INDEX_PREFIX)) == store.calls["put", "capture-index"]


def test_captured_predictions_are_found_after_a_restart_and_from_another_replica(
        tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    capture = writer(store)
    ids = [new_request_id("pred") for _ in range(300)]
    for prediction_id in ids:
        capture.submit(answer(prediction_id, inputs=3))
    capture.stop()  # the process ends: batches and index written

    for replica in (writer(open_store(store.uri)), writer(open_store(store.uri))):
        for prediction_id in ids:
            for index in range(3):
                entry = replica.captured(f"{prediction_id}-{index}", "acme")
                assert entry is not None
                assert (entry.tenant, entry.adapter, entry.version) == ("acme", "sentiment", "1")
                assert entry.input_text == f"text {prediction_id} {index}"
                assert entry.predicted_label == "pos"
        # an input the answer did not have
        assert replica.captured(f"{ids[0]}-3", "acme") is None
        assert replica.captured(new_request_id("pred") + "-0", "acme") is None
        replica.stop()


def test_a_lookup_reads_only_the_bucket_of_its_id(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    capture = writer(store)
    base = int(time.time())
    minutes = [base - 600, base - 300, base]  # three minute buckets
    for minute in minutes:
        for serial in range(100):
            capture.submit(answer(stamped_id(minute, serial)))
        capture.flush()  # at least one index object per bucket
    capture.stop()
    assert {index_bucket(stamped_id(m, 0)) for m in minutes} == {
        key.split("/")[2] for key in store.list(INDEX_PREFIX)}

    index = CaptureIndex(store)  # a fresh replica: nothing cached
    store.calls.clear()
    entry = index.find(f"{stamped_id(minutes[1], 7)}-0", stamped_id(minutes[1], 7), "acme")
    assert entry is not None and entry.prediction_id == stamped_id(minutes[1], 7)
    bucket = index_bucket(stamped_id(minutes[1], 0))
    objects_in_bucket = len(store.list(f"{INDEX_PREFIX}acme/{bucket}/"))
    assert store.calls["get", "capture-index"] == objects_in_bucket
    # The same bucket again: answered from memory.
    store.calls.clear()
    assert index.find(f"{stamped_id(minutes[1], 8)}-0", stamped_id(minutes[1], 8), "acme")
    assert store.calls["get", "capture-index"] == 0 and store.calls["list", "capture-index"] == 0
    # An unknown id: one listing of its (empty) bucket and one legacy get, nothing else.
    store.calls.clear()
    old = stamped_id(base - 86_400, 1)
    assert index.find(f"{old}-0", old, "acme") is None
    assert store.calls["list", "capture-index"] == 1
    assert store.calls["get", "capture-index"] == 0
    assert store.calls["get", "captures"] == 1  # the legacy per-input object


def test_the_cache_is_bounded_and_an_evicted_bucket_is_read_again(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    base = int(time.time()) - 3600
    one = entry(stamped_id(base, 0)).size
    index = CaptureIndex(store, max_bytes=120 * one)
    for bucket in range(5):  # 5 buckets of 50 entries, room for 120 entries
        index.write("acme", [entry(stamped_id(base + 60 * bucket, serial)) for serial in range(50)])
        assert index.cached_bytes() <= 120 * one
    store.calls.clear()
    for bucket in range(5):  # evicted buckets are read back from the store, all found
        prediction_id = stamped_id(base + 60 * bucket, 49)
        assert index.find(f"{prediction_id}-0", prediction_id, "acme") is not None
        assert index.cached_bytes() <= 120 * one
    assert store.calls["get", "capture-index"] >= 3  # at least the 3 evicted buckets
    huge = CaptureIndex(store, max_bytes=10 * one)  # smaller than one bucket: still found
    prediction_id = stamped_id(base + 120, 20)
    assert huge.find(f"{prediction_id}-0", prediction_id, "acme") is not None
    assert huge.cached_bytes() == 0


def test_predictions_captured_by_the_one_object_per_input_layout_are_still_found(
        tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "store")
    old = entry("pred-" + "e" * 24)
    store.put(f"captures/index/{old.key}.json",
              b'{"prediction_id": "pred-eeeeeeeeeeeeeeeeeeeeeeee", "index": 0, '
              b'"tenant": "acme", "adapter": "sentiment", "version": "1", "task": "seq-cls", '
              b'"input_text": "old", "predicted_label": "pos", "output_text": null}')
    found = CaptureIndex(store).find(old.key, old.prediction_id, "acme")
    assert found is not None and found.input_text == "old"


def test_uncaptured_answers_are_remembered_and_not_written(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    capture = writer(store, share=0.0)
    prediction_id = new_request_id("pred")
    capture.submit(answer(prediction_id, inputs=2))
    capture.flush()
    assert capture.was_uncaptured(f"{prediction_id}-1") == "acme"
    assert capture.captured(f"{prediction_id}-1", "acme") is None
    capture.stop()
    assert store.calls["put", "captures"] == 0 and store.calls["put", "capture-index"] == 0


def test_a_shared_policy_captures_whole_answers(tmp_path: Path) -> None:
    """One draw per answer, against the share: with a seeded generator the captured
    answers are exactly those whose draw fell below 0.5 (a per-input draw, a draw against
    1 - share or a share ignored all pick another set), each with every input."""
    store = FileSystemStore(tmp_path / "store")
    capture = writer(store, share=0.5, rng=random.Random(7))
    ids = [new_request_id("pred") for _ in range(200)]
    for prediction_id in ids:
        capture.submit(answer(prediction_id, inputs=2))
    capture.stop()
    rows = read_parquet_batches(store, "captures/acme/sentiment/")
    per_answer = Counter(row["prediction_id"] for row in rows)
    assert set(per_answer.values()) == {2}  # every input of a captured answer
    replay = random.Random(7)
    expected = {prediction_id for prediction_id in ids if replay.random() < 0.5}
    assert 60 <= len(expected) <= 140  # the seed gives a share near one half
    assert set(per_answer) == expected


class BlockedStore(FileSystemStore):
    """A store whose writes wait until released (a slow or stuck object store)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.release = threading.Event()

    def put(self, key: str, data: bytes) -> None:
        self.release.wait(30)
        super().put(key, data)


def test_the_request_path_never_waits_for_the_store(tmp_path: Path) -> None:
    store = BlockedStore(tmp_path / "store")
    capture = CaptureWriter(store, lambda tenant: 1.0, batch_rows=4, flush_seconds=600,
                            poll_seconds=0.01)
    capture.start()
    started = time.perf_counter()
    for _ in range(2000):  # the writer is stuck in its first put
        capture.submit(answer(new_request_id("pred")))
    assert time.perf_counter() - started < 1.0
    store.release.set()
    capture.stop()
    assert len(read_parquet_batches(store, "captures/acme/sentiment/")) == 2000


class FailingStore(FileSystemStore):
    """A store whose writes fail until ``healthy`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.healthy = threading.Event()

    def put(self, key: str, data: bytes) -> None:
        if not self.healthy.is_set():
            raise StoreError(f"{self.uri}: put {key!r} failed: the store is down")
        super().put(key, data)


def test_a_store_outage_loses_nothing_and_flush_says_so(tmp_path: Path) -> None:
    store = FailingStore(tmp_path / "store")
    capture = writer(store)
    ids = [new_request_id("pred") for _ in range(100)]  # more than a batch of 64
    for prediction_id in ids:
        capture.submit(answer(prediction_id))
    capture.add_feedback({"prediction_id": "pred-1", "label": "pos"}, "acme", "sentiment")
    assert capture.flush() is False  # the feedback batch is not in the store
    store.healthy.set()
    assert capture.flush() is True  # kept and written by the next write
    assert [r["label"] for r in read_parquet_batches(store, "feedback/acme/sentiment/")] == [
        "pos"]
    assert len(read_parquet_batches(store, "captures/acme/sentiment/")) == 100
    fresh = CaptureIndex(open_store(store.uri))
    assert all(fresh.find(f"{i}-0", i, "acme") is not None for i in ids)
    capture.stop()


def test_concurrent_flushes_each_wait_for_their_own_rows(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    capture = writer(store)
    seen: list[int] = []

    def send(serial: int) -> None:
        capture.add_feedback({"prediction_id": f"pred-{serial}", "label": "pos"}, "acme",
                             f"a{serial}")
        assert capture.flush()
        seen.append(len(read_parquet_batches(store, f"feedback/acme/a{serial}/")))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    capture.stop()
    assert seen == [1] * 20  # every caller found its own row written when flush returned


def test_handoff_is_bounded_but_forced_items_always_go_in() -> None:
    handoff: Handoff[int] = Handoff(capacity=3, poll_seconds=0.01)
    assert [handoff.put(i) for i in range(4)] == [True, True, True, False]
    assert handoff.put(99, force=True)
    assert handoff.drain() == [0, 1, 2, 99] and len(handoff) == 0


def test_answer_ids_carry_their_minute() -> None:
    prediction_id = new_request_id("pred")
    assert re.fullmatch(r"pred-[0-9a-f]{24}", prediction_id)
    assert index_bucket(prediction_id) == time.strftime("%Y%m%dT%H%M", time.gmtime()) or \
        index_bucket(prediction_id) == time.strftime("%Y%m%dT%H%M",
                                                     time.gmtime(time.time() - 60))
    assert re.fullmatch(r"h\d\d", index_bucket("pred-not-hex-at-all"))
    assert index_bucket("pred-zz") == index_bucket("pred-zz")


def entry(prediction_id: str) -> CapturedPrediction:
    return CapturedPrediction(prediction_id, 0, "acme", "sentiment", "1", "seq-cls",
                              f"text {prediction_id}", "pos", None)


@pytest.fixture(autouse=True)
def _quiet_capture_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR", logger="loraswap.service.drift.capture")
