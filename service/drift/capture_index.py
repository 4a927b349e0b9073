"""Where feedback finds a captured prediction: batched index objects of each tenant, bucketed
by the minute of the prediction id.

An answer id starts with the second it was minted (``pred-<8 hex seconds><16 hex>``, see
:func:`loraswap.service.api.answers.new_request_id`), so both the writer and any replica that later
receives feedback derive the same bucket from the id alone:

* ``capture-index/{owner}/{YYYYmmddTHHMM}/{utc}-{random}.jsonl``: one JSON line per
  captured input (:class:`CapturedPrediction`), one object per tenant and bucket per write
  of the capture thread (at most ``batch_rows`` lines), so capture costs O(batches) store
  writes, not one per input. ``owner`` is the tenant's data owner
  (:attr:`loraswap.tenants.directory.TenantRecord.data_owner`): no object holds two
  tenants' inputs, so one tenant's can be exported, erased and expired alone
  (:mod:`loraswap.jobs.tenant_data`). Objects are rewritten only to erase an adapter's
  lines. The earlier layout mixing tenants (``capture-index/{minute}/…``) is no longer
  read: it is erased per tenant and swept by age.
* A lookup (by the caller's own owner) reads only the objects of one bucket that it has not
  read yet (listing the
  bucket, then reading the new objects), so its cost is bounded by the writes of one
  minute, whatever the store holds; an unknown id lists one bucket (usually empty).
* Ids whose first 8 characters are not hex (never minted by this service) are bucketed by
  a hash of the id, so writer and reader still agree.
* ``captures/index/{id}-{index}.json``: the one-object-per-input layout of earlier
  versions, still read on a miss so predictions captured before the upgrade keep taking
  feedback.

What a replica read or wrote stays in a bounded cache (whole buckets, least recently used
evicted first, at most ``max_bytes`` of entries), so feedback on recent predictions is
answered without store reads on the replica that captured them.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from loraswap.adapters.package import TaskKind
from loraswap.adapters.store import ObjectStore
from loraswap.adapters.store.base import StoreKeyMissing
from loraswap.core.identity import AdapterRef, AdapterVersionRef, Version
from loraswap.jobs.tenant_data import INDEX_PREFIX, LEGACY_INDEX_PREFIX, index_prefix

ID_TIME_DIGITS = 8  # hex digits of the UNIX second at the start of an answer id
HASH_BUCKETS = 64
CACHE_BYTES = 32 << 20  # entries held in memory, counted by their text (inputs can be long)
MAX_BUCKETS = 4096  # buckets remembered (an empty one costs a few hundred bytes)
# A bucket is listed again at most this often: other replicas add objects to it at their
# flush interval, so listing it for every unknown id a caller invents only costs the store.
RELIST_SECONDS = 1.0
FUTURE_SLACK_SECONDS = 120  # clock skew between replicas tolerated for ids "from the future"
ENTRY_OVERHEAD = 200  # bytes an entry costs beyond its texts (ids, names, the objects)


@dataclass(frozen=True)
class CapturedPrediction:
    """The index entry of one captured prediction (stored as JSON: ``adapter`` is the name
    within ``tenant``, ``version`` the registry number as a string)."""

    prediction_id: str
    index: int
    tenant: str
    adapter: str
    version: str
    task: TaskKind
    input_text: str
    predicted_label: str | None
    output_text: str | None

    def __post_init__(self) -> None:
        # Read back from JSON, the task is its string: every reader compares TaskKinds.
        object.__setattr__(self, "task", TaskKind(self.task))

    @property
    def ref(self) -> AdapterVersionRef:
        """The version that answered."""
        return AdapterRef(self.tenant, self.adapter).at(Version.parse(self.version))

    @property
    def key(self) -> str:
        """``{prediction_id}-{index}``, as feedback names it."""
        return f"{self.prediction_id}-{self.index}"

    @property
    def size(self) -> int:
        """Approximate bytes this entry holds in memory."""
        return ENTRY_OVERHEAD + len(self.input_text) + len(self.output_text or "")


def index_bucket(prediction_id: str) -> str:
    """The bucket of an answer id: the UTC minute it was minted (or a hash shard)."""
    head = prediction_id.rpartition("-")[2][:ID_TIME_DIGITS]
    try:
        seconds = int(head, 16) if len(head) == ID_TIME_DIGITS else None
    except ValueError:
        seconds = None
    if seconds is None:
        return f"h{zlib.crc32(prediction_id.encode()) % HASH_BUCKETS:02d}"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y%m%dT%H%M")


def _minted_after(prediction_id: str, limit: float) -> bool:
    """Whether a time-stamped id says it was minted after ``limit`` (UNIX seconds)."""
    head = prediction_id.rpartition("-")[2][:ID_TIME_DIGITS]
    try:
        return len(head) == ID_TIME_DIGITS and int(head, 16) > limit
    except ValueError:
        return False


def index_object_key(owner: str, bucket: str) -> str:
    """A new, unique index object key of ``owner`` in ``bucket`` (time-ordered)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{index_prefix(owner, bucket)}{stamp}-{secrets.token_hex(4)}.jsonl"


def to_jsonl(entries: Iterable[CapturedPrediction]) -> bytes:
    """Entries as JSON lines."""
    return "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n"
                   for e in entries).encode("utf-8")


def from_jsonl(data: bytes) -> list[CapturedPrediction]:
    """The entries of one index object."""
    return [CapturedPrediction(**json.loads(line))
            for line in data.decode("utf-8").splitlines() if line.strip()]


@dataclass
class _Bucket:
    """What this replica knows of one bucket: the objects read (or written) and entries."""

    objects: set[str] = field(default_factory=set)
    entries: dict[str, CapturedPrediction] = field(default_factory=dict)
    size: int = 0
    listed_at: float | None = None  # monotonic time of the last listing, None: never


class CaptureIndex:
    """Writes index objects (capture thread) and finds entries by id (any thread).

    Store I/O happens outside the lock; the cache is updated under it. An object's entries
    are added together with its name, and buckets are evicted whole, so "object read" always
    means "its entries are in the cache": a lookup never skips an entry it has not seen.
    """

    def __init__(self, store: ObjectStore, max_bytes: int = CACHE_BYTES, *,
                 relist_seconds: float = RELIST_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._max_bytes = max_bytes
        self._relist = relist_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._size = 0

    def write(self, owner: str, entries: list[CapturedPrediction]) -> int:
        """Write ``entries`` (all of the tenant whose data owner is ``owner``) as one object
        per bucket; returns the objects written."""
        grouped: dict[str, list[CapturedPrediction]] = {}
        for entry in entries:
            grouped.setdefault(index_bucket(entry.prediction_id), []).append(entry)
        for bucket, group in grouped.items():
            key = index_object_key(owner, bucket)
            self.store.put(key, to_jsonl(group))
            self._remember(f"{owner}/{bucket}", key, group)
        return len(grouped)

    def find(self, key: str, prediction_id: str, owner: str) -> CapturedPrediction | None:
        """The entry of input ``key`` (``{id}-{index}``) of ``prediction_id`` among the
        captures of data owner ``owner`` (the caller's own), or None.

        An unknown id costs only the keyed lookup of the old layout when its id was minted
        in the future, and at
        most one listing of its bucket per ``relist_seconds`` shared by every caller (ids
        are chosen by callers: each must not be a listing of the store)."""
        if _minted_after(prediction_id, time.time() + FUTURE_SLACK_SECONDS):
            return self._legacy(key, owner)  # not in any bucket yet: only the keyed lookup
        bucket = f"{owner}/{index_bucket(prediction_id)}"
        found = self._cached(bucket, key)
        if found is not None:
            return found
        now = self._clock()
        with self._lock:
            cached = self._buckets.get(bucket)
            fresh = (cached is not None and cached.listed_at is not None
                     and now - cached.listed_at < self._relist)
            if not fresh:
                cached = self._buckets.setdefault(bucket, _Bucket())
                cached.listed_at = now
                self._trim()
            known = set(cached.objects) if cached is not None else set()
        if fresh:  # listed a moment ago: only the keyed lookup of the old layout
            return self._legacy(key, owner)
        for name in self.store.list(f"{INDEX_PREFIX}{bucket}/"):
            if name in known or not name.endswith(".jsonl"):
                continue
            try:
                entries = from_jsonl(self.store.get(name))
            except StoreKeyMissing:  # removed by an operator meanwhile
                continue
            self._remember(bucket, name, entries)
            found = found or next((e for e in entries if e.key == key), None)
        return found if found is not None else self._legacy(key, owner)

    def _cached(self, bucket: str, key: str) -> CapturedPrediction | None:
        with self._lock:
            known = self._buckets.get(bucket)
            if known is None:
                return None
            self._buckets.move_to_end(bucket)
            return known.entries.get(key)

    def _remember(self, bucket: str, name: str, entries: list[CapturedPrediction]) -> None:
        with self._lock:
            known = self._buckets.setdefault(bucket, _Bucket())
            self._buckets.move_to_end(bucket)
            if name in known.objects:
                return
            known.objects.add(name)
            for entry in entries:
                if entry.key not in known.entries:
                    known.entries[entry.key] = entry
                    known.size += entry.size
                    self._size += entry.size
            self._trim()

    def _trim(self) -> None:
        """Whole buckets go (their objects with their entries), the oldest first; even the
        current one when it alone is over the budget: it is then read again. Caller holds
        the lock."""
        while self._buckets and (self._size > self._max_bytes
                                 or len(self._buckets) > MAX_BUCKETS):
            _, evicted = self._buckets.popitem(last=False)
            self._size -= evicted.size

    def _legacy(self, key: str, owner: str) -> CapturedPrediction | None:
        """The one-object-per-input layout of the first versions, for a tenant from before
        ids (whose owner is its name): a tenant created since never owned such objects."""
        if "." in owner:
            return None
        try:
            raw = self.store.get(f"{LEGACY_INDEX_PREFIX}{key}.json")
        except StoreKeyMissing:
            return None
        return CapturedPrediction(**json.loads(raw))

    def drop(self, owner: str) -> None:
        """Forget what this replica cached of ``owner`` (its data was erased)."""
        with self._lock:
            for bucket in [b for b in self._buckets if b.startswith(f"{owner}/")]:
                self._size -= self._buckets.pop(bucket).size

    def cached_bytes(self) -> int:
        """Approximate bytes of the entries held in memory (tests, diagnostics)."""
        with self._lock:
            return self._size
