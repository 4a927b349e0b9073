"""Captured predictions and feedback in the object store, as append-only batches.

Layout (keys under the registry's store; ``owner`` is the tenant's data owner,
``{name}.{id}``, see :mod:`loraswap.jobs.tenant_data`, which also exports, erases and
expires it):

* ``captures/{owner}/{adapter}/batch-{utc}-{random}.parquet``: captured inputs and outputs
  (one row per input: prediction id, version, task, input, output JSON, predicted label,
  confidence, time);
* ``capture-index/{owner}/{YYYYmmddTHHMM}/{utc}-{random}.jsonl``: which adapter/version a
  captured prediction belongs to, with its input and predicted label, so feedback is
  checked and joined without scanning batches. One JSON line per captured input, one
  object per tenant, write and minute bucket (the minute is read from the prediction id),
  so a lookup reads one bucket of the caller's own: see
  :mod:`loraswap.service.drift.capture_index`. Objects of the earlier one-per-input layout
  (``captures/index/{id}-{index}.json``) are still found for tenants from before ids;
* ``feedback/{owner}/{adapter}/batch-{utc}-{random}.parquet``: ground truth beside the
  capture (prediction id, version, input, label or text, predicted label, time).

Everything is written by one writer thread (never the event loop, which only appends each
answer's records to a :class:`~loraswap.service.drift.handoff.Handoff`): a tenant/adapter batch
when ``batch_rows`` rows wait, the index when ``batch_rows`` entries wait, and everything
every ``flush_seconds``, on :meth:`CaptureWriter.flush` and at shutdown. So capture costs
O(inputs / batch_rows + flushes) store writes, never one per input; nothing is rewritten.
Whether a prediction is captured is the owning tenant's ``capture`` policy (off, a share,
or all). Measured cost: docs/drift.md "Drift on vs off".
"""

from __future__ import annotations

import io
import json
import logging
import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from loraswap.adapters.store import ObjectStore
from loraswap.jobs.tenant_data import CAPTURE_PREFIX, FEEDBACK_PREFIX
from loraswap.service.drift.capture_index import CapturedPrediction, CaptureIndex
from loraswap.service.drift.handoff import POLL_SECONDS, Handoff
from loraswap.service.drift.records import PredictionRecord

logger = logging.getLogger(__name__)

# Uncaptured prediction ids remembered (ids only) to tell "not captured" from "unknown".
RECENT_IDS = 100_000
# Answers waiting for the writer thread beyond this many are not captured (logged).
QUEUE_ANSWERS = 10_000
# Batches kept in memory per destination while the store fails (then the oldest go).
MAX_PENDING_BATCHES = 100

# The owning tenant's capture share (0 = off, 1 = all); may do I/O (cached by the caller).
CapturePolicy = Callable[[str], float]
# The data owner of a tenant (None: no such tenant, e.g. deleted); may do I/O (cached).
OwnerLookup = Callable[[str], str | None]
T = TypeVar("T")

__all__ = ["CAPTURE_PREFIX", "FEEDBACK_PREFIX", "CaptureWriter", "CapturedPrediction"]


def batch_key(prefix: str, tenant: str, adapter: str) -> str:
    """A new, unique batch key (time-ordered, so listings read in order)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{prefix}{tenant}/{adapter}/batch-{stamp}-{secrets.token_hex(4)}.parquet"


def to_parquet(rows: list[dict[str, Any]]) -> bytes:
    """Rows as one Parquet file."""
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def capture_row(record: PredictionRecord) -> dict[str, Any]:
    """The Parquet row of one captured input."""
    return {
        "prediction_id": record.prediction_id, "index": record.index,
        "version": record.ref.version, "task": record.task, "input": record.input_text,
        "output": json.dumps(record.output, ensure_ascii=False),
        "predicted_label": record.predicted_label, "confidence": record.confidence,
        "input_tokens": record.input_tokens, "created_at": record.created_at,
    }


def index_entry(record: PredictionRecord) -> CapturedPrediction:
    """The index entry of one captured input."""
    ref = record.ref
    return CapturedPrediction(
        record.prediction_id, record.index, ref.owner, ref.name, ref.version, record.task,
        record.input_text, record.predicted_label, record.output.get("text"))


class CaptureWriter:
    """Decides what to capture and writes capture, index and feedback batches from one
    thread."""

    def __init__(self, store: ObjectStore, policy: CapturePolicy, *, batch_rows: int = 256,
                 flush_seconds: float = 5.0, rng: random.Random | None = None,
                 poll_seconds: float = POLL_SECONDS, index: CaptureIndex | None = None,
                 owner_of: OwnerLookup = lambda tenant: tenant) -> None:
        """``owner_of`` gives a tenant's data owner (the default, its name, is the layout
        of tenants from before ids)."""
        self.store = store
        self.index = index or CaptureIndex(store)
        self.owner_of = owner_of
        self._policy = policy
        self._batch_rows = batch_rows
        self._flush_seconds = flush_seconds
        self._rng = rng or random.Random()
        self._handoff: Handoff[tuple[str, Any] | None] = Handoff(QUEUE_ANSWERS, poll_seconds)
        self._pending: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self._entries: list[tuple[str, CapturedPrediction]] = []  # (owner, entry) not written
        self._retry_at = 0.0  # after a failed write, size-triggered writes wait until then
        self._recent: OrderedDict[str, str] = OrderedDict()  # uncaptured id -> tenant
        # Inputs handed over but not in the index yet (submitted, or captured and not
        # written): feedback on one of these waits for a flush; any other id never does.
        self._queued: OrderedDict[str, None] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._flushed = threading.Condition()
        self._requested = 0  # flush tickets handed out (under _flushed)
        self._written = 0  # the last ticket whose write finished (under _flushed)
        self._failed = 0  # the last ticket whose write failed (under _flushed)

    # ------------------------------------------------------------- request path
    def submit(self, records: list[PredictionRecord]) -> None:
        """Hand one answer's records to the writer thread (never blocks, never wakes it)."""
        if not records:
            return
        with self._recent_lock:
            for record in records:
                self._queued[record.key] = None
            while len(self._queued) > RECENT_IDS:
                self._queued.popitem(last=False)
        if not self._handoff.put(("answer", records)):
            logger.warning("capture queue full: prediction %s not captured",
                           records[0].prediction_id)
            self._unqueue(records)

    def is_queued(self, key: str) -> bool:
        """Whether input ``key`` was answered here and is not in the index yet."""
        with self._recent_lock:
            return key in self._queued

    def _unqueue(self, keys: list[PredictionRecord] | list[CapturedPrediction]) -> None:
        with self._recent_lock:
            for item in keys:
                self._queued.pop(item.key, None)

    def add_feedback(self, row: dict[str, Any], owner: str, adapter: str) -> None:
        """Queue one feedback row for the next feedback batch of data owner ``owner``'s
        ``adapter``."""
        self._handoff.put(("feedback", (owner, adapter, row)), force=True)

    def forget(self, owner: str, adapter: str | None = None) -> None:
        """Drop what waits to be written for ``owner`` (its ``adapter``, or all) and what
        this replica cached of it, because that data is being erased. The writer thread
        drops it in order with what it was handed; a batch whose write was already under
        way may still land (the sweep removes objects of owners that no longer exist)."""
        self._handoff.put(("forget", (owner, adapter)), force=True)
        self._handoff.wake()
        self.index.drop(owner)

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
            self._handoff.put(None, force=True)
            self._handoff.wake()
            self._thread.join(timeout=30)
            self._thread = None

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything queued before this call is written (not on the loop);
        False when that write failed or did not finish within ``timeout``."""
        with self._flushed:
            self._requested += 1
            ticket = self._requested
            self._handoff.put(("flush", ticket), force=True)
            self._handoff.wake()
            done = self._flushed.wait_for(lambda: self._written >= ticket, timeout=timeout)
            return done and self._failed < ticket

    def _run(self) -> None:
        deadline = time.monotonic() + self._flush_seconds
        stopping = False
        while not stopping:
            self._handoff.wait(deadline - time.monotonic())
            ticket = 0  # the last flush ticket of this drain (tickets come in order)
            for item in self._handoff.drain():
                if item is None:
                    stopping = True
                elif item[0] == "flush":
                    ticket = item[1]
                else:
                    self._guarded(self._handle, item)
            if ticket or stopping or time.monotonic() >= deadline:
                written = self._guarded(self._write_all)
                deadline = time.monotonic() + self._flush_seconds
                if ticket:
                    self._notify_flushed(ticket, written)

    @staticmethod
    def _guarded(step: Callable[..., None], *args: Any) -> bool:
        try:
            step(*args)
        except Exception:  # the store failing must not stop capture for good
            logger.exception("capture writer failed")
            return False
        return True

    def _notify_flushed(self, ticket: int, written: bool) -> None:
        with self._flushed:
            self._written = ticket
            if not written:
                self._failed = ticket
            self._flushed.notify_all()

    def _handle(self, item: tuple[str, Any]) -> None:
        kind, payload = item
        if kind == "answer":
            self._capture(payload)
        elif kind == "feedback":
            owner, adapter, row = payload
            self._append((FEEDBACK_PREFIX, owner, adapter), row)
        elif kind == "forget":
            owner, adapter = payload
            for key in [k for k in self._pending
                        if k[1] == owner and (adapter is None or k[2] == adapter)]:
                del self._pending[key]
            dropped = [e for o, e in self._entries
                       if o == owner and (adapter is None or e.adapter == adapter)]
            self._entries = [(o, e) for o, e in self._entries
                             if not (o == owner and (adapter is None or e.adapter == adapter))]
            self._unqueue(dropped)

    def _capture(self, records: list[PredictionRecord]) -> None:
        """One answer's records: every input captured or none (one decision per answer)."""
        tenant = records[0].ref.owner
        share = self._policy(tenant)
        owner = self.owner_of(tenant) if share > 0 else None
        if owner is None or (share < 1 and self._rng.random() >= share):
            with self._recent_lock:
                for record in records:
                    self._recent[record.key] = tenant
                while len(self._recent) > RECENT_IDS:
                    self._recent.popitem(last=False)
                for record in records:
                    self._queued.pop(record.key, None)
            return
        for record in records:
            self._entries.append((owner, index_entry(record)))
            self._append((CAPTURE_PREFIX, owner, record.ref.name), capture_row(record))
        if len(self._entries) >= self._batch_rows and time.monotonic() >= self._retry_at:
            self._write_index()

    def _append(self, key: tuple[str, str, str], row: dict[str, Any]) -> None:
        rows = self._pending.setdefault(key, [])
        rows.append(row)
        if len(rows) >= self._batch_rows and time.monotonic() >= self._retry_at:
            self._write(key)

    def _write_all(self) -> None:
        """Write every pending batch and the index; raise the last failure after trying
        them all (what failed stays pending for the next write)."""
        failure: Exception | None = None
        for key in list(self._pending):
            try:
                self._write(key)
            except Exception as exc:
                failure = exc
        try:
            self._write_index()
        except Exception as exc:
            failure = exc
        if failure is not None:
            raise failure

    def _write(self, key: tuple[str, str, str]) -> None:
        rows = self._pending.pop(key, [])
        if rows:
            prefix, tenant, adapter = key
            try:
                self.store.put(batch_key(prefix, tenant, adapter), to_parquet(rows))
            except Exception:
                self._pending[key] = self._kept(rows + self._pending.get(key, []), key[0])
                raise

    def _write_index(self) -> None:
        entries, self._entries = self._entries, []
        by_owner: dict[str, list[CapturedPrediction]] = {}
        for owner, entry in entries:
            by_owner.setdefault(owner, []).append(entry)
        failed: list[tuple[str, CapturedPrediction]] = []
        failure: Exception | None = None
        for owner, group in by_owner.items():
            try:
                self.index.write(owner, group)
            except Exception as exc:
                failure = exc
                failed += [(owner, entry) for entry in group]
            else:
                self._unqueue(group)
        if failure is not None:
            waiting = failed + self._entries
            self._entries = self._kept(waiting, "capture index")
            self._unqueue([e for _, e in waiting[:len(waiting) - len(self._entries)]])
            raise failure

    def _kept(self, rows: list[T], what: str) -> list[T]:
        """What a failed write keeps for the next one: at most ``MAX_PENDING_BATCHES``
        batches (the oldest rows go first), so a store down for long costs bounded memory.
        Size-triggered writes then wait for the next timed write instead of retrying at
        every row."""
        self._retry_at = time.monotonic() + self._flush_seconds
        limit = MAX_PENDING_BATCHES * self._batch_rows
        if len(rows) > limit:
            logger.error("store unavailable: %d %s rows dropped", len(rows) - limit, what)
        return rows[-limit:]

    # ------------------------------------------------------------------- reads
    def captured(self, key: str, owner: str) -> CapturedPrediction | None:
        """The index entry of a captured input ``{id}-{index}`` among data owner
        ``owner``'s (store I/O: off the loop)."""
        return self.index.find(key, key.rpartition("-")[0], owner)
