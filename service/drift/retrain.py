"""The retraining loop's service side: Alertmanager webhook, dedupe, one run per adapter,
cooldown, launching, and the run records the admin API shows.

Alertmanager (webhook payload version 4) sends every notification of an alert group:
the first one, repeats every ``repeat_interval``, and ``resolved``. Each *firing* alert
whose ``adapter`` label names a registered adapter (``tenant/name``, as every loraswap
series spells it) starts at most one run: the pair
(``fingerprint``, ``startsAt``) is claimed once in the store (a repeat, or the same
delivery twice, finds it claimed), the adapter must not be busy with another run, and its
last alert-started run must be older than the cooldown. Resolved alerts start nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraswap.core.errors import ConflictError, InvalidRequestError
from loraswap.core.identity import SAFE_NAME, AdapterRef
from loraswap.jobs.retrain_runs import RunRecord, RunStore, RunTrigger, new_run_id
from loraswap.service.drift.launchers import Launcher

logger = logging.getLogger(__name__)

Outcome = Literal["started", "duplicate", "resolved", "busy", "cooldown", "ignored", "failed"]


class AlertmanagerAlert(BaseModel):
    """One alert of a webhook notification."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = ""  # noqa: N815 - Alertmanager's field name
    endsAt: str = ""  # noqa: N815
    fingerprint: str = ""


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook payload, version 4."""

    model_config = ConfigDict(extra="ignore")

    version: str
    status: Literal["firing", "resolved"]
    alerts: list[AlertmanagerAlert] = Field(max_length=1000)
    groupKey: str = ""  # noqa: N815
    receiver: str = ""


class AlertOutcome(BaseModel):
    """What one alert of a notification did."""

    fingerprint: str
    tenant: str | None = None
    adapter: str | None = None  # tenant/name, as in the alert's labels
    outcome: Outcome
    run_id: str | None = None
    detail: str = ""


class WebhookAnswer(BaseModel):
    """The answer to Alertmanager (it only looks at the status)."""

    alerts: list[AlertOutcome]


# Flushes captured feedback to the store before a run reads it (blocking; off the loop).
FlushFeedback = Callable[[], None]
# The current drift scores of an adapter (for the run record's trigger).
DriftScores = Callable[[str, str], dict[str, float]]


def alert_ref(labels: dict[str, str]) -> AdapterRef | None:
    """The registered adapter an alert names: its ``adapter`` label, ``tenant/name``. A bare
    name with a ``tenant`` label beside it (rules written before the labels were unified)
    is read the same way; None when neither names a valid registered adapter."""
    adapter, tenant = labels.get("adapter", ""), labels.get("tenant", "")
    try:
        ref = (AdapterRef.parse(adapter) if "/" in adapter or not tenant
               else AdapterRef(tenant, adapter))
    except InvalidRequestError:
        return None
    if not ref.is_registered or (tenant and ref.tenant != tenant):
        return None
    return ref


class RetrainService:
    """Starts retraining runs from alerts or by hand, and lists their records."""

    def __init__(self, runs: RunStore, launcher: Launcher, *, cooldown_seconds: float,
                 flush_feedback: FlushFeedback = lambda: None,
                 drift_scores: DriftScores = lambda tenant, adapter: {},
                 count: Callable[[str, str, str], None] = lambda t, a, o: None,
                 clock: Callable[[], float] = time.time) -> None:
        """``count(tenant, adapter, outcome)`` feeds ``loraswap_retrain_runs_total``."""
        self.runs = runs
        self.launcher = launcher
        self._cooldown = cooldown_seconds
        self._flush = flush_feedback
        self._drift_scores = drift_scores
        self._clock = clock
        self._count = count

    def handle_webhook(self, payload: AlertmanagerWebhook) -> WebhookAnswer:
        """Start at most one run per firing alert (blocking: call off the event loop)."""
        if payload.version != "4":
            raise InvalidRequestError(f"Alertmanager webhook version {payload.version!r} is "
                                      "not supported (expected \"4\")")
        outcomes = [self._alert(a) for a in payload.alerts]
        for out in outcomes:
            if out.tenant and out.adapter and out.outcome != "ignored":
                self._count(out.tenant, out.adapter, out.outcome)
        return WebhookAnswer(alerts=outcomes)

    def _alert(self, alert: AlertmanagerAlert) -> AlertOutcome:
        ref = alert_ref(alert.labels)
        out = AlertOutcome(fingerprint=alert.fingerprint, outcome="ignored",
                           tenant=ref.tenant if ref else alert.labels.get("tenant"),
                           adapter=str(ref) if ref else alert.labels.get("adapter"))
        if alert.status == "resolved":
            out.outcome, out.detail = "resolved", "resolved notifications start nothing"
            return out
        if ref is None:
            out.detail = "the alert has no valid 'adapter' label (tenant/name)"
            return out
        tenant, adapter = ref.owner, ref.name
        if not alert.fingerprint or not alert.startsAt:
            out.detail = "the alert has no fingerprint or startsAt"
            return out
        if not self.runs.first_sight(alert.fingerprint, alert.startsAt):
            out.outcome, out.detail = "duplicate", "this alert already started (or skipped) "\
                "a run"
            return out
        last = self.runs.last_started(tenant, adapter)
        if last is not None and self._clock() - last < self._cooldown:
            out.outcome = "cooldown"
            out.detail = (f"last run of {tenant}/{adapter} started "
                          f"{self._clock() - last:.0f}s ago (cooldown {self._cooldown:.0f}s)")
            return out
        trigger = RunTrigger(kind="alert", alert_labels=dict(alert.labels),
                             fingerprint=alert.fingerprint, starts_at=alert.startsAt)
        try:
            run = self.start(tenant, adapter, trigger)
        except ConflictError as exc:
            out.outcome, out.detail = "busy", exc.message
            return out
        self.runs.mark_started(tenant, adapter, self._clock())
        out.outcome, out.run_id = ("failed" if run.status == "failed" else "started"), run.id
        out.detail = run.reason or ""
        return out

    def start(self, tenant: str, adapter: str, trigger: RunTrigger) -> RunRecord:
        """Claim the adapter, record the run and launch it; 409 while another run holds it."""
        run_id = new_run_id()
        holder = self.runs.claim(tenant, adapter, run_id)
        if holder is not None:
            raise ConflictError(f"{tenant}/{adapter} is being retrained by run {holder}")
        trigger.drift_scores = self._drift_scores(tenant, adapter)
        run = RunRecord(id=run_id, tenant=tenant, adapter=adapter, trigger=trigger,
                        launcher=self.launcher.name)
        self.runs.save(run)
        try:
            self._flush()  # the run reads the feedback captured until now
            where = self.launcher.launch(run)
        except Exception as exc:
            logger.exception("launching retrain run %s failed", run_id)
            run.status, run.decision = "failed", "failed"
            run.reason = f"launch failed: {exc}"
            self.runs.save(run)
            self.runs.release(tenant, adapter, run_id)
            return run
        logger.info("retrain run %s for %s/%s launched (%s)", run_id, tenant, adapter, where)
        return run

    def start_manual(self, tenant: str, adapter: str) -> RunRecord:
        """A run started by hand (no cooldown; still one at a time)."""
        for name in (tenant, adapter):
            if not SAFE_NAME.fullmatch(name):
                raise InvalidRequestError(f"invalid name {name!r}")
        run = self.start(tenant, adapter, RunTrigger(kind="manual"))
        self._count(tenant, str(AdapterRef(tenant, adapter)),
                    "failed" if run.status == "failed" else "started")
        return run

    def list(self) -> list[dict[str, Any]]:
        """Every run record, newest first."""
        return [r.model_dump(mode="json") for r in self.runs.list()]
