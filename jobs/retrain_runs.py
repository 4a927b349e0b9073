"""Retraining run records in the object store, shared by the service and the run process.

Keys:

* ``retrain/runs/{id}.json``: the run record (trigger, drift scores, task, data sizes,
  gate metric and its direction, both evaluations, decision); rewritten by its one writer
  at each stage;
* ``retrain/seen/{YYYYmmdd}/{sha256(fingerprint|startsAt)}``: an alert that started a run
  (created with ``create_exclusive``, so two replicas receiving one notification start one
  run; given back when the run could not start, so a repeat of the alert may start it);
  dated by the alert's ``startsAt`` so old ones are swept (:meth:`RunStore.sweep_seen`);
* ``retrain/busy/{tenant}/{adapter}``: the run holding the adapter (one at a time);
  removed by the run when it ends, or taken over once the run's heartbeat is stale;
* ``retrain/heartbeat/{id}``: the last time the run's process said it is alive;
* ``retrain/daily/{tenant}/{YYYYmmdd}``: alert-started runs of the tenant that UTC day;
* ``retrain/last/{tenant}/{adapter}.json``: when the last alert-started run began
  (cooldown).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraswap.adapters.package import TaskKind
from loraswap.adapters.store.base import ObjectStore, StoreKeyMissing, update_object
from loraswap.core.errors import InvalidRequestError, NotFoundError
from loraswap.core.identity import AdapterRef, Version

RUNS_PREFIX = "retrain/runs/"
BUSY_PREFIX = "retrain/busy/"
SEEN_PREFIX = "retrain/seen/"
RUN_ID = re.compile(r"^[0-9]{14}-[0-9a-f]{6}$")
CANCELLED = "cancelled by an operator"
RunStatus = Literal["queued", "running", "finished", "failed"]
Decision = Literal["promoted", "kept", "failed"]


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat()


def new_run_id() -> str:
    """A sortable, unique run id safe in keys, Job names and labels (lowercase)."""
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)


class RunTrigger(BaseModel):
    """What started a run."""

    kind: Literal["alert", "manual"]
    alert_labels: dict[str, str] = Field(default_factory=dict)
    fingerprint: str | None = None
    starts_at: str | None = None
    drift_scores: dict[str, float] = Field(default_factory=dict)


class RunRecord(BaseModel):
    """One retraining run, from trigger to decision."""

    model_config = ConfigDict(extra="ignore")

    id: str
    tenant: str
    adapter: str
    status: RunStatus = "queued"
    trigger: RunTrigger
    launcher: str = "local"
    created_at: str = Field(default_factory=now_iso)
    started_at: str | None = None
    finished_at: str | None = None
    task: TaskKind | None = Field(default=None, description="The active version's task kind.")
    base_version: Version | None = None
    candidate_version: Version | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    gate_metric: str | None = None
    gate_direction: Literal["higher", "lower"] | None = Field(
        default=None, description="Which way the gate metric is better.")
    evaluations: dict[str, dict[str, float]] = Field(default_factory=dict)
    decision: Decision | None = None
    reason: str | None = None


class RunStore:
    """Run records, alert dedupe, per-adapter busy flags and cooldown stamps."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def save(self, record: RunRecord) -> None:
        """Write (or rewrite) a run record."""
        self.store.put(f"{RUNS_PREFIX}{record.id}.json",
                       record.model_dump_json(indent=2).encode())

    def get(self, run_id: str) -> RunRecord:
        """A run record; :class:`NotFoundError` naming it when absent (or not a run id:
        never a store key error)."""
        if not RUN_ID.fullmatch(run_id):
            raise NotFoundError(f"retraining run {run_id!r} not found")
        try:
            raw = self.store.get(f"{RUNS_PREFIX}{run_id}.json")
        except StoreKeyMissing:
            raise NotFoundError(f"retraining run {run_id!r} not found") from None
        return RunRecord.model_validate_json(raw)

    def list(self) -> list[RunRecord]:
        """Every run, newest first."""
        keys = sorted((k for k in self.store.list(RUNS_PREFIX) if k.endswith(".json")),
                      reverse=True)
        return [RunRecord.model_validate_json(self.store.get(k)) for k in keys]

    def claim_alert(self, fingerprint: str, starts_at: datetime) -> str | None:
        """The seen-key of an alert the first time it is claimed, on any replica (None:
        claimed before); give it back with :meth:`unclaim_alert` if no run starts."""
        digest = hashlib.sha256(f"{fingerprint}|{starts_at.isoformat()}".encode()).hexdigest()
        key = f"{SEEN_PREFIX}{starts_at.astimezone(UTC):%Y%m%d}/{digest}"
        return key if self.store.create_exclusive(key, b"1") else None

    def unclaim_alert(self, key: str) -> None:
        """Forget a claimed alert that started nothing (a repeat may then start a run)."""
        self.store.delete(key)

    def sweep_seen(self, keep_days: int, now: datetime | None = None) -> int:
        """Delete seen-marks of alerts that started over ``keep_days`` ago; the count."""
        cutoff = f"{(now or datetime.now(UTC)) - timedelta(days=keep_days):%Y%m%d}"
        old = [k for k in self.store.list(SEEN_PREFIX)
               if k[len(SEEN_PREFIX):].split("/", 1)[0] < cutoff]
        for key in old:
            self.store.delete(key)
        return len(old)

    def claim(self, tenant: str, adapter: str, run_id: str,
              stale_seconds: float | None = None) -> str | None:
        """Hold the adapter for ``run_id``; None if done, else the run holding it. A holder
        that ended, or whose heartbeat is older than ``stale_seconds``, is taken over (its
        record is failed as expired)."""
        key = f"{BUSY_PREFIX}{AdapterRef(tenant, adapter)}"
        if self.store.create_exclusive(key, run_id.encode()):
            return None
        try:
            holder = self.store.get(key).decode()
        except StoreKeyMissing:
            return self.claim(tenant, adapter, run_id, stale_seconds)
        if self.holding(holder, stale_seconds):
            return holder
        self.store.put(key, run_id.encode())  # a run that died without releasing
        return None

    def holding(self, run_id: str, stale_seconds: float | None) -> bool:
        """Whether ``run_id`` still holds its adapter: not ended, and (with
        ``stale_seconds``) alive; a stale run's record is failed here, with the reason."""
        try:
            record = self.get(run_id)
        except NotFoundError:
            return False
        if record.status in ("finished", "failed"):
            return False
        if stale_seconds is None:
            return True
        beat = self.last_heartbeat(run_id)
        if beat is None:
            beat = datetime.fromisoformat(record.created_at).timestamp()
        if time.time() - beat <= stale_seconds:
            return True
        record.status, record.decision = "failed", "failed"
        record.reason = (f"expired: no heartbeat from the run for over {stale_seconds:.0f}s "
                         "(its process was killed or lost)")
        record.finished_at = now_iso()
        self.save(record)
        return False

    def heartbeat(self, run_id: str) -> None:
        """Say the run's process is alive (the run calls this periodically)."""
        self.store.put(f"retrain/heartbeat/{run_id}", str(time.time()).encode())

    def last_heartbeat(self, run_id: str) -> float | None:
        """Unix time of the run's last heartbeat (None: none yet)."""
        try:
            return float(self.store.get(f"retrain/heartbeat/{run_id}"))
        except (StoreKeyMissing, ValueError):
            return None

    def cancelled(self, run_id: str) -> bool:
        """Whether an operator cancelled the run (the run checks before it registers)."""
        record = self.get(run_id)
        return record.status == "failed" and record.reason == CANCELLED

    def busy(self, stale_seconds: float | None) -> builtins.list[tuple[str, str, str]]:
        """(tenant, adapter, run id) of every run holding an adapter and alive."""
        found = []
        for key in self.store.list(BUSY_PREFIX):
            try:
                ref = AdapterRef.parse(key[len(BUSY_PREFIX):])
                holder = self.store.get(key).decode()
            except (InvalidRequestError, StoreKeyMissing):
                continue  # not a claim this code wrote, or released meanwhile
            if ref.is_registered and self.holding(holder, stale_seconds):
                found.append((ref.owner, ref.name, holder))
        return found

    def runs_today(self, tenant: str) -> int:
        """Alert-started runs of ``tenant`` this UTC day."""
        try:
            return int(self.store.get(self._daily(tenant)))
        except (StoreKeyMissing, ValueError):
            return 0

    def count_run(self, tenant: str) -> None:
        """Count one alert-started run of ``tenant`` today (compare-and-swap)."""
        update_object(self.store, self._daily(tenant),
                      lambda raw: str(int(raw or b"0") + 1).encode())

    @staticmethod
    def _daily(tenant: str) -> str:
        return f"retrain/daily/{tenant}/{datetime.now(UTC):%Y%m%d}"

    def release(self, tenant: str, adapter: str, run_id: str) -> None:
        """Give the adapter back (only if ``run_id`` holds it)."""
        key = f"{BUSY_PREFIX}{AdapterRef(tenant, adapter)}"
        try:
            if self.store.get(key).decode() == run_id:
                self.store.delete(key)
        except StoreKeyMissing:
            pass

    def last_started(self, tenant: str, adapter: str) -> float | None:
        """Unix time of the last alert-started run of the adapter."""
        try:
            raw = self.store.get(f"retrain/last/{tenant}/{adapter}.json")
        except StoreKeyMissing:
            return None
        return float(json.loads(raw)["started"])

    def mark_started(self, tenant: str, adapter: str, when: float) -> None:
        """Record an alert-started run for the cooldown."""
        self.store.put(f"retrain/last/{tenant}/{adapter}.json",
                       json.dumps({"started": when}).encode())
