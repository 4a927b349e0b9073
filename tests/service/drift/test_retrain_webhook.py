"""Alertmanager webhook: one run per new firing alert, none for repeats, resolved or busy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loraswap.adapters.store import open_store
from loraswap.jobs.retrain_runs import RunRecord, RunStore
from loraswap.service.drift.retrain import AlertmanagerWebhook, RetrainService


class RecordingLauncher:
    """Remembers the runs it was asked to start."""

    name = "fake"

    def __init__(self) -> None:
        self.launched: list[RunRecord] = []

    def launch(self, run: RunRecord) -> str:
        self.launched.append(run)
        return "nowhere"


def payload(status: str = "firing", starts_at: str = "2026-11-30T10:00:00Z",
            fingerprint: str = "abc123", adapter: str = "acme/sentiment") -> AlertmanagerWebhook:
    alert: dict[str, Any] = {
        "status": status, "startsAt": starts_at, "fingerprint": fingerprint,
        "labels": {"alertname": "LoraswapAdapterDrift", "tenant": "acme",
                   "adapter": adapter, "version": "1"},
    }
    return AlertmanagerWebhook.model_validate(
        {"version": "4", "status": status, "alerts": [alert], "groupKey": "{}:{}",
         "receiver": "loraswap-retrain"})


COUNTED: list[tuple[str, str, str]] = []


@pytest.fixture
def service(tmp_path: Path) -> tuple[RetrainService, RecordingLauncher, list[float]]:
    launcher = RecordingLauncher()
    now = [1000.0]
    COUNTED.clear()
    retrain = RetrainService(RunStore(open_store(tmp_path.as_uri())), launcher,
                             cooldown_seconds=600, clock=lambda: now[0],
                             count=lambda *outcome: COUNTED.append(outcome))
    return retrain, launcher, now


def test_the_same_delivery_twice_and_a_repeat_start_one_run(service) -> None:  # type: ignore[no-untyped-def]
    retrain, launcher, now = service
    first = retrain.handle_webhook(payload())
    assert [a.outcome for a in first.alerts] == ["started"]
    assert [a.outcome for a in retrain.handle_webhook(payload()).alerts] == ["duplicate"]
    now[0] += 3600  # Alertmanager's repeat_interval later: same fingerprint and startsAt
    assert [a.outcome for a in retrain.handle_webhook(payload()).alerts] == ["duplicate"]
    assert len(launcher.launched) == 1
    assert [o for _, _, o in COUNTED] == ["started", "duplicate", "duplicate"]
    run = retrain.runs.get(first.alerts[0].run_id or "")
    assert run.trigger.kind == "alert" and run.trigger.alert_labels["adapter"] == "acme/sentiment"


def test_a_resolved_notification_starts_nothing(service) -> None:  # type: ignore[no-untyped-def]
    retrain, launcher, _ = service
    answer = retrain.handle_webhook(payload(status="resolved"))
    assert [a.outcome for a in answer.alerts] == ["resolved"]
    assert launcher.launched == []


def test_one_run_per_adapter_at_a_time_then_a_cooldown(service) -> None:  # type: ignore[no-untyped-def]
    retrain, launcher, now = service
    manual = retrain.start_manual("acme", "sentiment")
    busy = retrain.handle_webhook(payload())
    assert busy.alerts[0].outcome == "busy"
    manual.status = "finished"
    retrain.runs.save(manual)
    retrain.runs.release("acme", "sentiment", manual.id)
    started = retrain.handle_webhook(payload(starts_at="2026-11-30T11:00:00Z", fingerprint="f2"))
    assert started.alerts[0].outcome == "started"
    run = retrain.runs.get(started.alerts[0].run_id or "")
    run.status = "finished"
    retrain.runs.save(run)
    retrain.runs.release("acme", "sentiment", run.id)
    now[0] += 60
    cooling = retrain.handle_webhook(payload(starts_at="2026-11-30T12:00:00Z",
                                             fingerprint="f3"))
    assert cooling.alerts[0].outcome == "cooldown"
    now[0] += 600
    again = retrain.handle_webhook(payload(starts_at="2026-11-30T13:00:00Z", fingerprint="f4"))
    assert again.alerts[0].outcome == "started"
    assert len(launcher.launched) == 3


def test_alerts_without_a_registered_adapter_label_are_ignored(service) -> None:  # type: ignore[no-untyped-def]
    retrain, launcher, _ = service
    body = payload()
    del body.alerts[0].labels["adapter"]
    assert retrain.handle_webhook(body).alerts[0].outcome == "ignored"
    for bad in ("sentiment", "other/sentiment", "acme/Bad Name"):
        body = payload(adapter=bad, fingerprint=bad)
        if bad == "sentiment":
            del body.alerts[0].labels["tenant"]  # a bare name and no tenant: a dev adapter
        assert retrain.handle_webhook(body).alerts[0].outcome == "ignored", bad
    assert launcher.launched == []


def test_an_alert_with_the_bare_name_and_a_tenant_label_still_starts_a_run(service) -> None:  # type: ignore[no-untyped-def]
    """Rules written before the labels were unified put the bare name in ``adapter``."""
    retrain, launcher, _ = service
    [outcome] = retrain.handle_webhook(payload(adapter="sentiment")).alerts
    assert (outcome.outcome, outcome.adapter) == ("started", "acme/sentiment")
    assert [(r.tenant, r.adapter) for r in launcher.launched] == [("acme", "sentiment")]


def test_a_manual_run_is_refused_while_one_runs(service) -> None:  # type: ignore[no-untyped-def]
    from loraswap.core.errors import ConflictError

    retrain, _, _ = service
    retrain.start_manual("acme", "sentiment")
    with pytest.raises(ConflictError):
        retrain.start_manual("acme", "sentiment")
