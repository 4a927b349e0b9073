"""A tenant's captured data in the store: its layout, export, deletion and retention.

Everything a tenant's traffic leaves in the store is under a prefix of its own **data
owner** (``TenantRecord.data_owner``: ``{name}.{id}``, the id minted when the tenant is
created and never changed; a record from before ids existed owns ``{name}``):

* ``captures/{owner}/{adapter}/batch-{utc}-{random}.parquet``: captured inputs/outputs;
* ``capture-index/{owner}/{minute}/{utc}-{random}.jsonl``: which adapter and version
  answered each captured prediction (what feedback is checked against);
* ``feedback/{owner}/{adapter}/batch-{utc}-{random}.parquet``: ground truth;
* ``training-data/{tenant}/{adapter}/…``: training data copies (by name: only admin calls
  and runs write them, and they are deleted with the adapter).

Because the owner carries the immutable id, a tenant created again under a deleted
tenant's name owns a new, empty prefix: a late write of the old tenant (a capture batch
another replica flushed after the deletion) lands under the old owner and is swept, never
read by the new tenant. Objects of earlier layouts that mixed tenants
(``capture-index/{minute}/…`` and ``captures/index/{id}-{n}.json``) are erased line by
line for a deleted tenant and swept by age.

Ages come from the key (the UTC stamp a batch or index object was written at; the second
an answer id was minted for the per-input layout), so a sweep lists and deletes but reads
nothing.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from loraswap.adapters.store.base import ObjectStore, StoreKeyMissing
from loraswap.jobs.training_data import DATA_PREFIX

logger = logging.getLogger(__name__)

CAPTURE_PREFIX = "captures/"
INDEX_PREFIX = "capture-index/"
FEEDBACK_PREFIX = "feedback/"
LEGACY_INDEX_PREFIX = "captures/index/"  # one object per input, earliest layout
STAMP_FORMAT = "%Y%m%dT%H%M%S%f"
_STAMP = re.compile(r"(?:^|-)(\d{8}T\d{12})-[0-9a-f]+\.(?:parquet|jsonl)$")
_LEGACY_ID_TIME = re.compile(r"^[a-z]+-([0-9a-f]{8})")
# Prefixes whose objects are a tenant's per-owner data (sweep by age and by owner).
OWNER_PREFIXES = (CAPTURE_PREFIX, FEEDBACK_PREFIX, INDEX_PREFIX)


def capture_prefix(owner: str, adapter: str | None = None) -> str:
    """Where ``owner``'s capture batches (of ``adapter``, or all) are."""
    return f"{CAPTURE_PREFIX}{owner}/" + (f"{adapter}/" if adapter else "")


def feedback_prefix(owner: str, adapter: str | None = None) -> str:
    """Where ``owner``'s feedback batches (of ``adapter``, or all) are."""
    return f"{FEEDBACK_PREFIX}{owner}/" + (f"{adapter}/" if adapter else "")


def index_prefix(owner: str, bucket: str | None = None) -> str:
    """Where ``owner``'s capture-index objects (of one minute ``bucket``, or all) are."""
    return f"{INDEX_PREFIX}{owner}/" + (f"{bucket}/" if bucket else "")


def training_prefix(tenant: str, adapter: str | None = None) -> str:
    """Where training-data copies of ``tenant`` (``adapter``, or all) are."""
    return f"{DATA_PREFIX}{tenant}/" + (f"{adapter}/" if adapter else "")


def written_at(key: str) -> datetime | None:
    """When an object of these layouts was written (from its key); None: not known."""
    name = key.rpartition("/")[2]
    found = _STAMP.search(name)
    if found is not None:
        return datetime.strptime(found.group(1), STAMP_FORMAT).replace(tzinfo=UTC)
    if key.startswith(LEGACY_INDEX_PREFIX) and key.count("/") == 2:
        minted = _LEGACY_ID_TIME.match(name)
        if minted is not None:
            return datetime.fromtimestamp(int(minted.group(1), 16), UTC)
    return None


def _owner_of(key: str) -> str | None:
    """The owner segment of a per-owner object (None: an object of a mixed layout)."""
    for prefix in OWNER_PREFIXES:
        if key.startswith(prefix):
            parts = key[len(prefix):].split("/")
            # per-owner objects are {owner}/{adapter or minute}/{file}; the mixed layouts
            # (capture-index/{minute}/{file}, captures/index/{file}) are one level less.
            return parts[0] if len(parts) == 3 else None
    return None


def _is_legacy_mixed_index(key: str) -> bool:
    return key.startswith(INDEX_PREFIX) and key.count("/") == 2 and key.endswith(".jsonl")


def _is_legacy_entry(key: str) -> bool:
    return key.startswith(LEGACY_INDEX_PREFIX) and key.count("/") == 2 and key.endswith(".json")


@dataclass
class SweepReport:
    """What one sweep deleted."""

    expired: int = 0  # objects older than the retention
    orphaned: int = 0  # objects of an owner that no longer exists
    owners_checked: bool = False  # False: the tenant list was incomplete, no orphan pass
    errors: list[str] = field(default_factory=list)


class TenantData:
    """Export, erase and expire tenants' captured data in one store (blocking I/O)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # ------------------------------------------------------------------ selection
    def _keys(self, owner: str, tenant: str, adapter: str | None) -> list[str]:
        keys: list[str] = []
        prefixes = [capture_prefix(owner, adapter), feedback_prefix(owner, adapter),
                    training_prefix(tenant, adapter)]
        if adapter is None:
            prefixes.append(index_prefix(owner))
        for prefix in prefixes:
            keys += [k for k in self.store.list(prefix)
                     if prefix == training_prefix(tenant, adapter) or _owner_of(k) == owner]
        return keys

    def _index_keys(self, owner: str) -> list[str]:
        return [k for k in self.store.list(index_prefix(owner)) if _owner_of(k) == owner]

    def _legacy_lines(self, tenant: str, adapter: str | None,
                      ) -> Iterable[tuple[str, list[str], list[str]]]:
        """Objects of the mixed layouts holding ``tenant``'s lines: (key, its lines, the
        other tenants' lines)."""
        for key in self.store.list(INDEX_PREFIX):
            if _is_legacy_mixed_index(key):
                yield self._split_lines(key, tenant, adapter)
        for key in self.store.list(LEGACY_INDEX_PREFIX):
            if _is_legacy_entry(key):
                yield self._split_lines(key, tenant, adapter)

    def _split_lines(self, key: str, tenant: str,
                     adapter: str | None) -> tuple[str, list[str], list[str]]:
        try:
            text = self.store.get(key).decode("utf-8")
        except StoreKeyMissing:
            return key, [], []
        mine: list[str] = []
        others: list[str] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                others.append(line)
                continue
            match = (isinstance(entry, dict) and entry.get("tenant") == tenant
                     and (adapter is None or entry.get("adapter") == adapter))
            (mine if match else others).append(line)
        return key, mine, others

    # --------------------------------------------------------------------- export
    def export(self, owner: str, tenant: str, destination: Path,
               adapter: str | None = None) -> int:
        """Write every object of ``owner`` (``adapter``'s, or all) into a zip archive at
        ``destination``, under its store key, plus ``legacy-index.jsonl`` with the
        tenant's lines of the mixed layouts; returns the objects written."""
        count = 0
        with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key in self._keys(owner, tenant, adapter):
                try:
                    data = self.store.get(key)
                except StoreKeyMissing:
                    continue
                archive.writestr(key, data)
                count += 1
            legacy = [line for _, mine, _ in self._legacy_lines(tenant, adapter)
                      for line in mine]
            if legacy:
                archive.writestr("legacy-index.jsonl", "\n".join(legacy) + "\n")
                count += 1
        return count

    def export_to_temp(self, owner: str, tenant: str, adapter: str | None = None) -> Path:
        """:meth:`export` into a new temporary file (the caller deletes it)."""
        with tempfile.NamedTemporaryFile(prefix="loraswap-export-", suffix=".zip",
                                         delete=False) as handle:
            path = Path(handle.name)
        try:
            self.export(owner, tenant, path, adapter)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    # ------------------------------------------------------------------- deletion
    def erase(self, owner: str, tenant: str, adapter: str | None = None) -> int:
        """Delete every object of ``owner`` (of ``adapter``, or all: captures, feedback,
        the capture index, training data) and the tenant's lines of the mixed layouts;
        returns the objects deleted or rewritten."""
        count = 0
        for key in self._keys(owner, tenant, adapter):
            self.store.delete(key)
            count += 1
        if adapter is not None:  # the owner's index objects also hold other adapters
            for key in self._index_keys(owner):
                count += self._rewrite(*self._split_lines(key, tenant, adapter))
        for key, mine, others in self._legacy_lines(tenant, adapter):
            count += self._rewrite(key, mine, others)
        return count

    def _rewrite(self, key: str, mine: list[str], others: list[str]) -> int:
        if not mine:
            return 0
        if others:
            self.store.put(key, ("\n".join(others) + "\n").encode("utf-8"))
        else:
            self.store.delete(key)
        return 1

    # ------------------------------------------------------------------ retention
    def sweep(self, retention: timedelta, live_owners: Callable[[], set[str] | None],
              now: datetime | None = None) -> SweepReport:
        """Delete objects written more than ``retention`` ago, then (when
        ``live_owners()`` gives the complete set of owners that exist) every object of an
        owner that no longer exists. Training-data copies are kept: they are deleted with
        their adapter. The data is listed *before* the owners, so an owner created during
        the sweep has nothing listed yet."""
        report = SweepReport()
        limit = (now or datetime.now(UTC)) - retention
        listed: list[str] = []
        for prefix in (*OWNER_PREFIXES, DATA_PREFIX):
            listed += self.store.list(prefix)
        owners = live_owners()
        report.owners_checked = owners is not None
        names = {owner.partition(".")[0] for owner in owners or ()}
        for key in dict.fromkeys(listed):
            try:
                if key.startswith(DATA_PREFIX):  # kept until its adapter or tenant goes
                    gone = owners is not None and key[len(DATA_PREFIX):].split("/")[0] \
                        not in names
                    expired = False
                else:
                    stamp = written_at(key)
                    owner = _owner_of(key)
                    expired = stamp is not None and stamp < limit
                    gone = owners is not None and owner is not None and owner not in owners
                if expired or gone:
                    self.store.delete(key)
                    if expired:
                        report.expired += 1
                    else:
                        report.orphaned += 1
            except Exception as exc:  # one failing delete must not stop the sweep
                report.errors.append(f"{key}: {exc}")
        return report
