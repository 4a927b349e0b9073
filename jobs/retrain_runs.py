"""Retraining run records in the object store, shared by the service and the run process.

Keys:

* ``retrain/runs/{id}.json``: the run record (trigger, drift scores, task, data sizes,
  gate metric and its direction, both evaluations, decision); rewritten by its one writer
  at each stage;
* ``retrain/seen/{sha256(fingerprint|startsAt)}``: an alert already handled (created with
  ``create_exclusive``, so two replicas receiving one notification start one run);
* ``retrain/busy/{tenant}/{adapter}``: the run holding the adapter (one at a time);
  removed by the run when it ends;
* ``retrain/last/{tenant}/{adapter}.json``: when the last alert-started run began
  (cooldown).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraswap.adapters.package import TaskKind
from loraswap.adapters.store.base import ObjectStore, StoreKeyMissing
from loraswap.core.errors import NotFoundError
from loraswap.core.identity import Version

RUNS_PREFIX = "retrain/runs/"
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
        """A run record; :class:`NotFoundError` naming it when absent."""
        if not run_id.replace("-", "").isalnum() or len(run_id) > 64:
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

    def first_sight(self, fingerprint: str, starts_at: str) -> bool:
        """True the first time an alert (fingerprint, startsAt) is seen, on any replica."""
        digest = hashlib.sha256(f"{fingerprint}|{starts_at}".encode()).hexdigest()
        return self.store.create_exclusive(f"retrain/seen/{digest}", starts_at.encode())

    def claim(self, tenant: str, adapter: str, run_id: str) -> str | None:
        """Hold the adapter for ``run_id``; None if done, else the run holding it."""
        key = f"retrain/busy/{tenant}/{adapter}"
        if self.store.create_exclusive(key, run_id.encode()):
            return None
        try:
            holder = self.store.get(key).decode()
        except StoreKeyMissing:
            return self.claim(tenant, adapter, run_id)
        try:
            ended = self.get(holder).status in ("finished", "failed")
        except NotFoundError:
            ended = True
        if ended:  # a run that died without releasing: take over
            self.store.put(key, run_id.encode())
            return None
        return holder

    def release(self, tenant: str, adapter: str, run_id: str) -> None:
        """Give the adapter back (only if ``run_id`` holds it)."""
        key = f"retrain/busy/{tenant}/{adapter}"
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
