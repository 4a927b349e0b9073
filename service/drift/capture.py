"""Captured predictions and feedback in the object store, as append-only Parquet batches.

Layout (keys under the registry's store):

* ``captures/{tenant}/{adapter}/batch-{utc}-{random}.parquet``: captured inputs and outputs
  (one row per input: prediction id, version, task, input, output JSON, predicted label,
  confidence, time);
* ``captures/index/{prediction_id}-{index}.json``: which tenant/adapter/version a captured
  prediction belongs to, with its input and predicted label, so feedback is checked and
  joined without scanning batches;
* ``feedback/{tenant}/{adapter}/batch-{utc}-{random}.parquet``: ground truth beside the
  capture (prediction id, version, input, label or text, predicted label, time).

Batches are written by one writer thread (never the event loop), when ``batch_rows`` rows
wait or ``flush_seconds`` passed; nothing is ever rewritten. Whether a prediction is
captured is the owning tenant's ``capture`` policy (off, a share, or all).
"""

from __future__ import annotations

import io
import json
import logging
import queue
import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from adapters.store import ObjectStore
from adapters.store.base import StoreKeyMissing
from service.drift.records import PredictionRecord

logger = logging.getLogger(__name__)

CAPTURE_PREFIX = "captures/"
INDEX_PREFIX = "captures/index/"
FEEDBACK_PREFIX = "feedback/"
# Uncaptured prediction ids remembered (ids only) to tell "not captured" from "unknown".
RECENT_IDS = 100_000

# The owning tenant's capture share (0 = off, 1 = all); may do I/O (cached by the caller).
CapturePolicy = Callable[[str], float]


@dataclass(frozen=True)
class CapturedPrediction:
    """The index entry of one captured prediction."""

    prediction_id: str
    index: int
    tenant: str
    adapter: str
    version: str
    task: str
    input_text: str
    predicted_label: str | None
    output_text: str | None


def batch_key(prefix: str, tenant: str, adapter: str) -> str:
    """A new, unique batch key (time-ordered, so listings read in order)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{prefix}{tenant}/{adapter}/batch-{stamp}-{secrets.token_hex(4)}.parquet"


def to_parquet(rows: list[dict[str, Any]]) -> bytes:
    """Rows as one Parquet file."""
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


class CaptureWriter:
    """Decides what to capture and writes capture and feedback batches from one thread."""

    def __init__(self, store: ObjectStore, policy: CapturePolicy, *, batch_rows: int = 256,
                 flush_seconds: float = 5.0, rng: random.Random | None = None) -> None:
        self.store = store
        self._policy = policy
        self._batch_rows = batch_rows
        self._flush_seconds = flush_seconds
        self._rng = rng or random.Random()
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(10_000)
        self._pending: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self._recent: OrderedDict[str, str] = OrderedDict()  # uncaptured id -> tenant
        self._recent_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._flushed = threading.Condition()
        self._generation = 0

    # ------------------------------------------------------------- request path
    def submit(self, record: PredictionRecord) -> None:
        """Queue a record for the capture decision (never blocks; drops when full)."""
        try:
            self._queue.put_nowait(("prediction", record))
        except queue.Full:
            logger.warning("capture queue full: prediction %s not captured",
                           record.prediction_id)

    def add_feedback(self, row: dict[str, Any], tenant: str, adapter: str) -> None:
        """Queue one feedback row for the next feedback batch of ``tenant/adapter``."""
        self._queue.put(("feedback", (tenant, adapter, row)))

    def was_uncaptured(self, key: str) -> str | None:
        """The tenant of a recent input (``{id}-{index}``) answered but not captured."""
        with self._recent_lock:
            return self._recent.get(key)

    # --------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name="loraswap-capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what waits and stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything queued before this call is written (not on the loop)."""
        with self._flushed:
            target = self._generation + 1
            self._queue.put(("flush", None))
            self._flushed.wait_for(lambda: self._generation >= target, timeout=timeout)

    def _run(self) -> None:
        deadline = time.monotonic() + self._flush_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = ("tick", None)
            if item is None:
                self._write_all()
                return
            try:
                self._handle(item)
                if item[0] in ("flush", "tick") or time.monotonic() >= deadline:
                    self._write_all()
                    deadline = time.monotonic() + self._flush_seconds
            except Exception:  # the store failing must not stop capture for good
                logger.exception("capture writer failed")
            if item[0] == "flush":
                with self._flushed:
                    self._generation += 1
                    self._flushed.notify_all()

    def _handle(self, item: tuple[str, Any]) -> None:
        kind, payload = item
        if kind == "prediction":
            self._capture(payload)
        elif kind == "feedback":
            tenant, adapter, row = payload
            self._append((FEEDBACK_PREFIX, tenant, adapter), row)

    def _capture(self, record: PredictionRecord) -> None:
        ref = record.ref
        share = self._policy(ref.tenant)
        if share <= 0 or (share < 1 and self._rng.random() >= share):
            with self._recent_lock:
                self._recent[record.key] = ref.tenant
                while len(self._recent) > RECENT_IDS:
                    self._recent.popitem(last=False)
            return
        entry = CapturedPrediction(
            record.prediction_id, record.index, ref.tenant, ref.adapter, ref.version, record.task,
            record.input_text, record.predicted_label, record.output.get("text"))
        self.store.put(f"{INDEX_PREFIX}{record.key}.json",
                       json.dumps(entry.__dict__).encode())
        self._append((CAPTURE_PREFIX, ref.tenant, ref.adapter), {
            "prediction_id": record.prediction_id, "index": record.index,
            "version": ref.version,
            "task": record.task, "input": record.input_text,
            "output": json.dumps(record.output, ensure_ascii=False),
            "predicted_label": record.predicted_label, "confidence": record.confidence,
            "input_tokens": record.input_tokens, "created_at": record.created_at,
        })

    def _append(self, key: tuple[str, str, str], row: dict[str, Any]) -> None:
        rows = self._pending.setdefault(key, [])
        rows.append(row)
        if len(rows) >= self._batch_rows:
            self._write(key)

    def _write_all(self) -> None:
        for key in list(self._pending):
            self._write(key)

    def _write(self, key: tuple[str, str, str]) -> None:
        rows = self._pending.pop(key, [])
        if rows:
            prefix, tenant, adapter = key
            self.store.put(batch_key(prefix, tenant, adapter), to_parquet(rows))

    # ------------------------------------------------------------------- reads
    def captured(self, key: str) -> CapturedPrediction | None:
        """The index entry of a captured input ``{id}-{index}`` (store I/O: off the loop)."""
        try:
            raw = self.store.get(f"{INDEX_PREFIX}{key}.json")
        except StoreKeyMissing:
            return None
        return CapturedPrediction(**json.loads(raw))
