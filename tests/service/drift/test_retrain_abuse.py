"""The retrain webhook cannot be driven by any alert, for any adapter, without bounds; a
dead run does not block its adapter; a run can be cancelled (issue 23, findings 3, 5)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from loraswap.adapters.store import open_store
from loraswap.core.errors import ConflictError, NotFoundError
from loraswap.jobs.retrain_runs import CANCELLED, RunRecord, RunStore
from loraswap.service.drift.retrain import AlertmanagerWebhook, RetrainLimits, RetrainService

REGISTERED = {("acme", "sentiment"), ("acme", "topics"), ("beta", "intent"),
              ("gamma", "ner")}


class Launcher:
    name = "fake"

    def __init__(self) -> None:
        self.launched: list[RunRecord] = []
        self.cancelled: list[str] = []

    def launch(self, run: RunRecord) -> str:
        self.launched.append(run)
        return "nowhere"

    def cancel(self, run: RunRecord) -> None:
        self.cancelled.append(run.id)


def alert(tenant: str = "acme", adapter: str = "sentiment", name: str = "LoraswapAdapterDrift",
          fingerprint: str = "f1", starts_at: str = "2026-11-30T10:00:00Z") -> dict[str, Any]:
    return {"status": "firing", "startsAt": starts_at, "fingerprint": fingerprint,
            "labels": {"alertname": name, "tenant": tenant, "adapter": adapter}}


def webhook(*alerts: dict[str, Any]) -> AlertmanagerWebhook:
    return AlertmanagerWebhook.model_validate(
        {"version": "4", "status": "firing", "alerts": list(alerts)})


def build(tmp_path: Path, limits: RetrainLimits | None = None,
          ) -> tuple[RetrainService, Launcher, list[float], list[str]]:
    launcher, now, refused = Launcher(), [1000.0], []
    service = RetrainService(
        RunStore(open_store(tmp_path.as_uri())), launcher, cooldown_seconds=600,
        clock=lambda: now[0], limits=limits, refused=refused.append,
        eligible=lambda t, a: None if (t, a) in REGISTERED else f"{t}/{a} is not registered")
    return service, launcher, now, refused


def outcomes(service: RetrainService, *alerts: dict[str, Any]) -> list[str]:
    return [a.outcome for a in service.handle_webhook(webhook(*alerts)).alerts]


def test_foreign_alert_names_and_unknown_adapters_start_nothing(tmp_path: Path) -> None:
    service, launcher, _, refused = build(tmp_path)
    forged = [alert(tenant="t", adapter=f"a{i}", name="AnythingAtAll", fingerprint=f"x{i}")
              for i in range(5)]
    assert outcomes(service, *forged) == ["ignored"] * 5
    assert outcomes(service, alert(adapter="ghost")) == ["rejected"]
    # Old code: 5 launch attempts, run records, cooldown stamps and seen marks.
    assert launcher.launched == []
    assert service.runs.store.list("retrain/") == []
    assert refused == ["ignored"] * 5 + ["rejected"]


def test_concurrent_and_daily_caps_refuse_and_count(tmp_path: Path) -> None:
    service, launcher, now, refused = build(tmp_path, RetrainLimits(
        max_concurrent=2, max_concurrent_per_tenant=1, max_per_tenant_per_day=2))
    assert outcomes(service, alert(fingerprint="a"), alert(adapter="topics", fingerprint="b"),
                    alert("beta", "intent", fingerprint="c"),
                    alert("gamma", "ner", fingerprint="d")) == [
        "started", "limited", "started", "limited"]
    assert refused == ["limited", "limited"]
    for run in launcher.launched:  # both finish
        run.status = "finished"
        service.runs.save(run)
        service.runs.release(run.tenant, run.adapter, run.id)
    assert outcomes(service, alert(adapter="topics", fingerprint="b")) == ["started"]
    done = launcher.launched[-1]
    done.status = "finished"
    service.runs.save(done)
    service.runs.release(done.tenant, done.adapter, done.id)
    now[0] += 3600
    assert outcomes(service, alert(fingerprint="e")) == ["limited"]  # 2 runs today
    assert "PER_TENANT_PER_DAY" in service.handle_webhook(
        webhook(alert(fingerprint="e"))).alerts[0].detail


def test_an_alert_refused_for_a_passing_reason_is_not_used_up(tmp_path: Path) -> None:
    service, _, _, _ = build(tmp_path)
    manual = service.start_manual("acme", "sentiment")
    assert outcomes(service, alert()) == ["busy"]
    manual.status = "finished"
    service.runs.save(manual)
    service.runs.release("acme", "sentiment", manual.id)
    # Old code: marked seen before the busy check, so this repeat was a "duplicate".
    assert outcomes(service, alert()) == ["started"]
    assert outcomes(service, alert()) == ["duplicate"]


def test_a_run_without_heartbeat_expires_and_frees_its_adapter(tmp_path: Path) -> None:
    service, launcher, _, _ = build(tmp_path, RetrainLimits(stale_seconds=0.2))
    dead = service.start_manual("acme", "sentiment")  # its process never beats
    with pytest.raises(ConflictError):
        service.start_manual("acme", "sentiment")
    time.sleep(0.3)
    assert outcomes(service, alert()) == ["started"]  # old code: "busy" forever
    expired = service.runs.get(dead.id)
    assert expired.status == "failed" and "no heartbeat" in (expired.reason or "")
    alive = launcher.launched[-1]
    service.runs.heartbeat(alive.id)
    with pytest.raises(ConflictError):  # a beating run keeps its adapter
        service.start_manual("acme", "sentiment")


def test_cancel_frees_the_adapter_and_marks_the_run(tmp_path: Path) -> None:
    service, launcher, _, _ = build(tmp_path)
    run = service.start_manual("acme", "sentiment")
    cancelled = service.cancel(run.id)
    assert cancelled.status == "failed" and cancelled.reason == CANCELLED
    assert service.runs.cancelled(run.id) and launcher.cancelled == [run.id]
    service.start_manual("acme", "sentiment")  # free again
    with pytest.raises(ConflictError):
        service.cancel(run.id)
    with pytest.raises(NotFoundError):
        service.cancel("20261130100000-abcdef")
    with pytest.raises(NotFoundError):  # old code: a store key error (503)
        service.runs.get("é")


def test_seen_marks_are_swept_after_their_days(tmp_path: Path) -> None:
    service, _, _, _ = build(tmp_path)
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    assert outcomes(service, alert(starts_at=old, fingerprint="old"),
                    alert("beta", "intent", fingerprint="new",
                          starts_at=datetime.now(UTC).isoformat())) == ["started", "started"]
    assert len(service.runs.store.list("retrain/seen/")) == 2
    assert service.runs.sweep_seen(keep_days=30) == 1
    assert len(service.runs.store.list("retrain/seen/")) == 1


WEBHOOK = "whk-" + "5" * 40


def test_the_webhook_token_posts_alerts_and_nothing_else(live_server: Any) -> None:
    from tests.service.drift.test_capture_feedback_api import ADMIN, ADMIN_HEADERS

    server = live_server(admin_token=ADMIN, dev_mode=False, retrain_webhook_token=WEBHOOK)
    hook = {"Authorization": f"Bearer {WEBHOOK}"}
    body = webhook(alert(adapter="ghost")).model_dump(mode="json")
    answer = server.client.post("/admin/retrain", headers=hook, json=body)
    assert answer.status_code == 200, answer.text  # old code: 401 (admin token only)
    assert answer.json()["alerts"][0]["outcome"] == "rejected"  # not registered
    assert server.client.post("/admin/retrain", headers=ADMIN_HEADERS,
                              json=body).status_code == 200  # an operator's replay
    for method, path in (("GET", "/admin/retrain"), ("GET", "/admin/tenants"),
                         ("POST", "/admin/retrain/acme/sentiment")):
        assert server.client.request(method, path, headers=hook).status_code == 401
    assert server.client.post("/admin/retrain", json=body).status_code == 401
    # A run id that is not a store key: 404 (old code: 503 store_unavailable).
    assert server.client.get("/admin/retrain/%C3%A9",
                             headers=ADMIN_HEADERS).status_code == 404
    assert server.client.post("/admin/retrain/20261130100000-abcdef/cancel",
                              headers=ADMIN_HEADERS).status_code == 404
