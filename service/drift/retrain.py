"""The retraining loop's service side: Alertmanager webhook, dedupe, one run per adapter,
cooldown, launching, and the run records the admin API shows.

Alertmanager (webhook payload version 4) sends every notification of an alert group:
the first one, repeats every ``repeat_interval``, and ``resolved``. Each *firing* alert
named like a rule loraswap ships (:data:`RETRAIN_ALERTS`) whose ``adapter`` label names a
registered adapter (``tenant/name``, as every loraswap series spells it) with a drift
profile starts at most one run: the pair
(``fingerprint``, ``startsAt``) is claimed once in the store (a repeat, or the same
delivery twice, finds it claimed), the adapter must not be busy with another run, its
last alert-started run must be older than the cooldown, and the caps must allow it
(:class:`RetrainLimits`: runs at once in all and per tenant, runs per tenant per day).
An alert that starts no run for a passing reason (busy, cooldown, a cap) gives its claim
back, so a repeat of it may start the run later. Resolved alerts start nothing. Every
refusal is logged and counted (``loraswap_retrain_refusals_total{reason}``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraswap.core.errors import ConflictError, InvalidRequestError
from loraswap.core.identity import SAFE_NAME, AdapterRef
from loraswap.jobs.retrain_runs import (
    CANCELLED,
    RunRecord,
    RunStore,
    RunTrigger,
    new_run_id,
    now_iso,
)
from loraswap.service.drift.launchers import Launcher

logger = logging.getLogger(__name__)

Outcome = Literal["started", "duplicate", "resolved", "busy", "cooldown", "limited",
                  "rejected", "ignored", "failed"]
# The alerts of monitoring/rules (and k8s/base/prometheusrule.yaml) that ask for a run.
RETRAIN_ALERTS = frozenset({"LoraswapAdapterDrift"})
# Seen-marks of alerts are kept this long (Alertmanager repeats a firing alert with its
# original startsAt; one firing for over a month is re-admitted, within the caps), and
# swept at most once a day per replica, by the webhook itself.
SEEN_DAYS = 30
SWEEP_SECONDS = 86_400.0
# Why an adapter cannot be retrained (None: it can): not registered, no drift profile.
Eligibility = Callable[[str, str], str | None]


@dataclass(frozen=True)
class RetrainLimits:
    """Caps on what alerts may start (LORASWAP_RETRAIN_MAX_*), and when a run is dead."""

    max_concurrent: int = 2
    max_concurrent_per_tenant: int = 1
    max_per_tenant_per_day: int = 4
    stale_seconds: float = 900.0


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
                 clock: Callable[[], float] = time.time,
                 eligible: Eligibility = lambda tenant, adapter: None,
                 limits: RetrainLimits | None = None,
                 refused: Callable[[str], None] = lambda reason: None) -> None:
        """``count(tenant, adapter, outcome)`` feeds ``loraswap_retrain_runs_total``
        (only for registered adapters: alert labels are not trusted as metric labels);
        ``refused(reason)`` feeds ``loraswap_retrain_refusals_total``."""
        self.runs = runs
        self.launcher = launcher
        self._cooldown = cooldown_seconds
        self._flush = flush_feedback
        self._drift_scores = drift_scores
        self._clock = clock
        self._count = count
        self._eligible = eligible
        self.limits = limits or RetrainLimits()
        self._refused = refused
        self._swept = float("-inf")  # when seen-marks were last swept (by this replica)

    def handle_webhook(self, payload: AlertmanagerWebhook) -> WebhookAnswer:
        """Start at most one run per firing alert (blocking: call off the event loop)."""
        if payload.version != "4":
            raise InvalidRequestError(f"Alertmanager webhook version {payload.version!r} is "
                                      "not supported (expected \"4\")")
        if self._clock() - self._swept > SWEEP_SECONDS:
            self._swept = self._clock()
            self.runs.sweep_seen(SEEN_DAYS)
        outcomes = []
        for alert in payload.alerts:
            out = self._alert(alert)
            if out.outcome in ("rejected", "ignored", "limited", "cooldown", "busy"):
                self._refuse(out)
            outcomes.append(out)
        for out in outcomes:
            if out.tenant and out.adapter and out.outcome not in ("ignored", "rejected"):
                self._count(out.tenant, out.adapter, out.outcome)
        return WebhookAnswer(alerts=outcomes)

    def _refuse(self, out: AlertOutcome) -> None:
        """Log and count an alert that started nothing (not for duplicates or resolved)."""
        logger.warning("retrain alert %s for %s refused (%s): %s", out.fingerprint,
                       out.adapter, out.outcome, out.detail)
        self._refused(out.outcome)

    def _alert(self, alert: AlertmanagerAlert) -> AlertOutcome:
        ref = alert_ref(alert.labels)
        out = AlertOutcome(fingerprint=alert.fingerprint, outcome="ignored",
                           tenant=ref.tenant if ref else alert.labels.get("tenant"),
                           adapter=str(ref) if ref else alert.labels.get("adapter"))
        if alert.status == "resolved":
            out.outcome, out.detail = "resolved", "resolved notifications start nothing"
            return out
        name = alert.labels.get("alertname", "")
        if name not in RETRAIN_ALERTS:
            out.detail = (f"alertname {name[:100]!r} is not an alert loraswap ships for "
                          f"retraining ({', '.join(sorted(RETRAIN_ALERTS))})")
            return out
        if ref is None:
            out.detail = "the alert has no valid 'adapter' label (tenant/name)"
            return out
        tenant, adapter = ref.owner, ref.name
        starts_at = _parse_time(alert.startsAt)
        if not alert.fingerprint or len(alert.fingerprint) > 64 or starts_at is None:
            out.detail = "the alert has no fingerprint or no valid startsAt"
            return out
        problem = self._eligible(tenant, adapter)
        if problem is not None:
            out.outcome, out.detail = "rejected", problem
            return out
        seen = self.runs.claim_alert(alert.fingerprint, starts_at)
        if seen is None:
            out.outcome, out.detail = "duplicate", "this alert already started a run"
            return out
        trigger = RunTrigger(kind="alert", alert_labels=dict(alert.labels),
                             fingerprint=alert.fingerprint, starts_at=alert.startsAt)
        try:
            refusal = self._cooldown_or_cap(tenant, adapter, out)
            run = None if refusal else self.start(tenant, adapter, trigger)
        except ConflictError as exc:
            out.outcome, out.detail, run = "busy", exc.message, None
        if run is None:
            self.runs.unclaim_alert(seen)  # a repeat of the alert may start the run
            return out
        self.runs.mark_started(tenant, adapter, self._clock())
        self.runs.count_run(tenant)
        out.outcome, out.run_id = ("failed" if run.status == "failed" else "started"), run.id
        out.detail = run.reason or ""
        return out

    def _cooldown_or_cap(self, tenant: str, adapter: str, out: AlertOutcome) -> bool:
        """Set ``out`` and return True when the cooldown or a cap refuses a run now."""
        last = self.runs.last_started(tenant, adapter)
        if last is not None and self._clock() - last < self._cooldown:
            out.outcome = "cooldown"
            out.detail = (f"last run of {tenant}/{adapter} started "
                          f"{self._clock() - last:.0f}s ago (cooldown {self._cooldown:.0f}s)")
            return True
        limits = self.limits
        today = self.runs.runs_today(tenant)
        if today >= limits.max_per_tenant_per_day:
            out.outcome = "limited"
            out.detail = (f"tenant {tenant} had {today} alert-started runs today "
                          f"(LORASWAP_RETRAIN_MAX_RUNS_PER_TENANT_PER_DAY="
                          f"{limits.max_per_tenant_per_day})")
            return True
        busy = self.runs.busy(limits.stale_seconds)
        if any((t, a) == (tenant, adapter) for t, a, _ in busy):
            return False  # start() answers "busy" naming the run
        mine = Counter(t for t, _, _ in busy)[tenant]
        if len(busy) >= limits.max_concurrent:
            out.outcome = "limited"
            out.detail = (f"{len(busy)} runs in progress (LORASWAP_RETRAIN_MAX_CONCURRENT_RUNS="
                          f"{limits.max_concurrent})")
            return True
        if mine >= limits.max_concurrent_per_tenant:
            out.outcome = "limited"
            out.detail = (f"tenant {tenant} has {mine} runs in progress (LORASWAP_RETRAIN_MAX_"
                          f"CONCURRENT_RUNS_PER_TENANT={limits.max_concurrent_per_tenant})")
            return True
        return False

    def start(self, tenant: str, adapter: str, trigger: RunTrigger) -> RunRecord:
        """Claim the adapter, record the run and launch it; 409 while another run holds it
        (a run whose heartbeat is stale no longer does: it is expired)."""
        run_id = new_run_id()
        holder = self.runs.claim(tenant, adapter, run_id, self.limits.stale_seconds)
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

    def cancel(self, run_id: str) -> RunRecord:
        """Cancel a queued or running run: its record says so, its adapter is free, its
        process is stopped where the launcher can, and it never registers (the run checks
        before it does); 409 for a run that already ended."""
        run = self.runs.get(run_id)
        if run.status in ("finished", "failed"):
            raise ConflictError(f"run {run_id} already ended ({run.status})")
        run.status, run.decision, run.reason = "failed", "failed", CANCELLED
        run.finished_at = now_iso()
        self.runs.save(run)
        self.runs.release(run.tenant, run.adapter, run.id)
        try:
            self.launcher.cancel(run)
        except Exception:  # the record already says cancelled; the run checks it
            logger.exception("stopping the process of run %s failed", run_id)
        return run

    def list(self) -> list[dict[str, Any]]:
        """Every run record, newest first."""
        return [r.model_dump(mode="json") for r in self.runs.list()]


def _parse_time(value: str) -> datetime | None:
    """An RFC 3339 time with its zone (Alertmanager's ``startsAt``), or None."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
