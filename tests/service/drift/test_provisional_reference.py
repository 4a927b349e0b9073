"""A version without any profile is tracked with every signal absent and a reason naming
the admin call; once a profile appears the monitor re-reads it and scores the window."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from loraswap.core.identity import AdapterVersionRef
from loraswap.jobs.profile_jobs import JobStatus, ProfileJob
from loraswap.service.drift.metrics import DriftMetrics
from loraswap.service.drift.monitor import DriftConfig, DriftMonitor
from loraswap.service.drift.pipeline import no_profile
from loraswap.service.drift.reference import EMBEDDING, ReferenceProfile, parse_profile
from tests.service.drift.helpers import REF, FakeClock, profile, records, score

UPLOAD = "PUT /admin/adapters/acme/sentiment/versions/1/reference/{file}"


def job(status: JobStatus, reason: str | None = None) -> ProfileJob:
    return ProfileJob(id="20261201000000-abc123", tenant="acme", adapter="sentiment",
                      version=1, filename="r.csv", reference_key="k", text_column="text",
                      max_rows=2000, status=status, reason=reason)


def test_the_reason_names_the_upload_and_follows_the_job() -> None:
    fresh = no_profile(REF, None)
    assert fresh.provisional and fresh.input_length is None and fresh.embedding is None
    assert set(fresh.missing.values()) == {f"no profile.json: upload a reference dataset "
                                           f"with {UPLOAD}"}
    assert set(fresh.missing) == set(parse_profile(None).missing)
    running = no_profile(REF, job("running"))
    assert set(running.missing.values()) == {
        "no profile.json yet: profiling job 20261201000000-abc123 is running (GET "
        "/admin/adapters/acme/sentiment/versions/1/profile)"}
    failed = no_profile(REF, job("failed", "ValueError: bad"))
    assert set(failed.missing.values()) == {
        "no profile.json: profiling job 20261201000000-abc123 failed (ValueError: bad); "
        f"upload a corrected reference dataset with {UPLOAD}"}


def test_a_profile_that_appears_later_is_used_without_retracking() -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    found: list[ReferenceProfile] = [no_profile(REF, None)]
    loads: list[AdapterVersionRef] = []

    def references(ref: AdapterVersionRef) -> ReferenceProfile:
        loads.append(ref)
        return found[0]

    monitor = DriftMonitor(
        DriftConfig(window_size=200, min_samples=50, score_interval=1, retire_interval=1,
                    reference_refresh=1),
        DriftMetrics(registry), references, lambda tenant, adapter: "1", clock=clock)
    for record in records(60):
        monitor.process(record)
    clock.now += 2
    monitor.score_all()
    assert score(registry, "input_length", "psi") is None  # absent, not zero
    snapshot = monitor.snapshot("acme", "sentiment")
    assert snapshot is not None and snapshot["window_samples"] == 60
    assert "upload a reference dataset" in str(snapshot["absent_signals"])

    found[0] = parse_profile(profile())  # the job stored a profile
    clock.now += 2
    monitor.score_all()
    assert len(loads) == 3  # tracked once, re-read at each refresh interval until found
    for signal, method in (("input_length", "psi"), ("predicted_label", "js"),
                           ("confidence", "psi")):
        assert score(registry, signal, method) is not None, signal
    assert score(registry, EMBEDDING, "mmd") is None  # embeddings start again
    for record in records(60, seed=2):
        monitor.process(record)
    monitor.score_all()
    assert score(registry, EMBEDDING, "mmd") is not None
    assert monitor.snapshot("acme", "sentiment")["absent_signals"] == {}  # type: ignore[index]
    clock.now += 2
    monitor.score_all()
    assert len(loads) == 3  # a real profile is never re-read
