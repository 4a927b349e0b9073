"""Composition of drift monitoring, capture and feedback for one service instance."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry

from loraswap.adapters.package import PROFILE_FILE, TaskKind
from loraswap.adapters.registry import AdapterRegistry
from loraswap.core.errors import NotFoundError
from loraswap.core.identity import AdapterVersionRef, Version
from loraswap.jobs.profile_jobs import ProfileJob, ProfileJobs
from loraswap.jobs.retrain_runs import RunStore
from loraswap.service.drift.capture import CaptureWriter
from loraswap.service.drift.feedback import FeedbackService
from loraswap.service.drift.launchers import KubernetesLauncher, Launcher, LocalLauncher
from loraswap.service.drift.metrics import DriftMetrics
from loraswap.service.drift.monitor import DriftConfig, DriftMonitor
from loraswap.service.drift.profiles import ProfileService
from loraswap.service.drift.records import PredictionRecord
from loraswap.service.drift.reference import ReferenceProfile, parse_profile
from loraswap.service.drift.retrain import (
    DriftScores,
    Eligibility,
    FlushFeedback,
    RetrainLimits,
    RetrainService,
)
from loraswap.service.settings import Settings
from loraswap.tenants.directory import TenantDirectory


class CapturePolicies:
    """Each tenant's capture share and data owner, re-read from the tenant directory at
    most every ``refresh_seconds`` (the capture thread asks once per prediction)."""

    def __init__(self, tenants: TenantDirectory, refresh_seconds: float) -> None:
        self._tenants = tenants
        self._refresh = refresh_seconds
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, str | None, float]] = {}

    def _lookup(self, tenant: str) -> tuple[float, str | None]:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(tenant)
        if cached is not None and now - cached[2] < self._refresh:
            return cached[0], cached[1]
        try:
            record = self._tenants.get(tenant)
            share, owner = record.policy.capture_share, record.data_owner
        except NotFoundError:
            share, owner = 0.0, None
        with self._lock:
            self._cache[tenant] = (share, owner, now)
        return share, owner

    def __call__(self, tenant: str) -> float:
        return self._lookup(tenant)[0]

    def owner(self, tenant: str) -> str | None:
        """The tenant's data owner (None: no such tenant)."""
        return self._lookup(tenant)[1]

    def forget(self, tenant: str) -> None:
        """Drop the cached answer for ``tenant`` (deleted or re-created here)."""
        with self._lock:
            self._cache.pop(tenant, None)


def registry_references(registry: AdapterRegistry) -> Any:
    """A reference loader: the package's ``profile.json`` (from the version's local copy)
    when it has one, else the profile computed from an uploaded reference file; without
    either, a provisional reference saying how to get one (re-read until one appears)."""
    jobs = ProfileJobs(registry.store)

    def load(ref: AdapterVersionRef) -> ReferenceProfile:
        version = ref.version.number
        manifest = registry.version(ref.owner, ref.name, version).manifest
        task = manifest.task  # which signals apply
        if PROFILE_FILE in manifest.files:
            folder = registry.local_folder(ref.owner, ref.name, version)
            return parse_profile(json.loads((folder / PROFILE_FILE).read_text("utf-8")),
                                 task=task)
        uploaded = jobs.read_profile(ref.owner, ref.name, version)
        if uploaded is not None:
            return parse_profile(uploaded, task=task)
        return no_profile(ref, jobs.get(ref.owner, ref.name, version), task)
    return load


def no_profile(ref: AdapterVersionRef, job: ProfileJob | None,
               task: TaskKind | None = None) -> ReferenceProfile:
    """The reference of a version without any profile: every signal absent, the reason
    naming the admin call that computes one and the state of its latest job."""
    upload = (f"PUT /admin/adapters/{ref.owner}/{ref.name}/versions/{ref.version}/"
              "reference/{file}")
    if job is None or job.status == "done":
        reason = f"no profile.json: upload a reference dataset with {upload}"
    elif job.status == "failed":
        reason = (f"no profile.json: profiling job {job.id} failed ({job.reason}); upload a "
                  f"corrected reference dataset with {upload}")
    else:
        reason = (f"no profile.json yet: profiling job {job.id} is {job.status} (GET "
                  f"/admin/adapters/{ref.owner}/{ref.name}/versions/{ref.version}/profile)")
    empty = parse_profile(None, task=task)
    return replace(empty, missing={signal: reason for signal in empty.missing},
                   provisional=True)


def registry_active(registry: AdapterRegistry) -> Any:
    """The active version of ``tenant/adapter`` (None: none)."""
    def active(tenant: str, adapter: str) -> Version | None:
        return registry.active(tenant, adapter).key.version
    return active


def registry_labels(registry: AdapterRegistry) -> Any:
    """The labels of an adapter version (None when it is gone), for feedback checks."""
    def labels(key: AdapterVersionRef) -> list[str] | None:
        try:
            return registry.version(key.owner, key.name, key.version.number).manifest.labels
        except NotFoundError:
            return None
    return labels


class DriftPipeline:
    """The prediction sink of the request path: drift windows, capture and feedback."""

    def __init__(self, monitor: DriftMonitor, capture: CaptureWriter,
                 feedback: FeedbackService, metrics: DriftMetrics) -> None:
        self.monitor = monitor
        self.capture = capture
        self.feedback = feedback
        self.metrics = metrics

    def submit(self, records: list[PredictionRecord]) -> None:
        """Hand the records of one answer to the drift and capture threads (non-blocking)."""
        for record in records:
            self.monitor.submit(record)
        self.capture.submit(records)

    def start(self) -> None:
        """Start the drift and capture threads."""
        self.monitor.start()
        self.capture.start()

    def stop(self) -> None:
        """Stop both threads, writing the capture batches that wait."""
        self.monitor.stop()
        self.capture.stop()


def build_drift(settings: Settings, registry: AdapterRegistry, tenants: TenantDirectory,
                metrics_registry: CollectorRegistry) -> DriftPipeline:
    """The drift pipeline from the settings (call only when ``drift_enabled``)."""
    metrics = DriftMetrics(metrics_registry)
    config = DriftConfig(
        window_size=settings.drift_window_size, min_samples=settings.drift_min_samples,
        score_interval=settings.drift_score_interval_seconds,
        retire_interval=max(1.0, 2 * settings.registry_refresh_seconds),
        max_versions=settings.drift_max_versions,
        reference_refresh=settings.drift_reference_refresh_seconds)
    feedback_min = settings.drift_min_feedback
    policies = CapturePolicies(tenants, settings.registry_refresh_seconds)
    capture = CaptureWriter(registry.store, policies,
                            flush_seconds=settings.drift_capture_flush_seconds,
                            owner_of=policies.owner)
    feedback = FeedbackService(capture, metrics, feedback_min, registry_labels(registry))
    monitor = DriftMonitor(config, metrics, registry_references(registry),
                           registry_active(registry), on_retire=feedback.forget)
    return DriftPipeline(monitor, capture, feedback, metrics)


def build_retrain(settings: Settings, registry: AdapterRegistry, drift: DriftPipeline | None,
                  metrics_registry: CollectorRegistry) -> RetrainService:
    """The retraining service with the launcher the settings name."""
    launcher: Launcher
    if settings.retrain_launcher == "kubernetes":
        launcher = KubernetesLauncher(settings.retrain_job_template)
    else:
        launcher = LocalLauncher(run_environment(settings), settings.run_log_dir,
                                 timeout_seconds=settings.retrain_timeout_seconds)
    scores: DriftScores = lambda tenant, adapter: {}  # noqa: E731
    flush: FlushFeedback = lambda: None  # noqa: E731
    metrics = drift.metrics if drift is not None else DriftMetrics(metrics_registry)
    if drift is not None:
        monitor, capture = drift.monitor, drift.capture

        def scores(tenant: str, adapter: str) -> dict[str, float]:
            snapshot = monitor.snapshot(tenant, adapter) or {}
            found = snapshot.get("scores")
            return dict(found) if isinstance(found, dict) else {}

        def flush() -> None:
            capture.flush()  # a failed write leaves the latest feedback to the next run
    limits = RetrainLimits(
        max_concurrent=settings.retrain_max_concurrent_runs,
        max_concurrent_per_tenant=settings.retrain_max_concurrent_runs_per_tenant,
        max_per_tenant_per_day=settings.retrain_max_runs_per_tenant_per_day,
        stale_seconds=settings.retrain_stale_seconds)
    return RetrainService(RunStore(registry.store), launcher,
                          cooldown_seconds=settings.retrain_cooldown_seconds,
                          flush_feedback=flush, drift_scores=scores,
                          count=lambda t, a, o: metrics.retrain_runs.labels(t, a, o).inc(),
                          eligible=registry_eligibility(registry), limits=limits,
                          refused=lambda reason: metrics.retrain_refusals.labels(reason).inc())


def registry_eligibility(registry: AdapterRegistry) -> Eligibility:
    """Why an alert's adapter cannot be retrained: not registered (no active version), or
    its active version has no drift profile (package ``profile.json`` or uploaded)."""
    jobs = ProfileJobs(registry.store)

    def eligible(tenant: str, adapter: str) -> str | None:
        try:
            active = registry.active(tenant, adapter)
        except NotFoundError:
            return f"{tenant}/{adapter} is not a registered adapter with an active version"
        if PROFILE_FILE in active.manifest.files or jobs.read_profile(
                tenant, adapter, active.version) is not None:
            return None
        return (f"{tenant}/{adapter} version {active.version} has no drift profile, so no "
                "drift alert can be about it")
    return eligible


def build_profiles(settings: Settings, registry: AdapterRegistry) -> ProfileService:
    """The profiling service, launching jobs where retraining runs do
    (``LORASWAP_RETRAIN_LAUNCHER``)."""
    if settings.retrain_launcher == "kubernetes":
        return ProfileService(registry, KubernetesLauncher(settings.retrain_job_template))
    env = run_environment(settings)
    if settings.quantization is not None:  # the job profiles in the served precision
        env["LORASWAP_QUANTIZATION"] = settings.quantization.value
    return ProfileService(registry, LocalLauncher(
        env, settings.run_log_dir, timeout_seconds=settings.retrain_timeout_seconds))


def run_environment(settings: Settings) -> dict[str, str]:
    """What a local run process needs to find the store, the base model and its settings."""
    return {
        "LORASWAP_STORE_URI": settings.store_uri,
        "LORASWAP_BASE_MODEL": str(settings.base_model),
        "LORASWAP_ADAPTER_CACHE_DIR": str(settings.adapter_cache_dir),
        "LORASWAP_RETRAIN_FEEDBACK_HOLDOUT": str(settings.retrain_feedback_holdout),
        "LORASWAP_RETRAIN_MIN_GAIN": str(settings.retrain_min_gain),
        "LORASWAP_RETRAIN_WARM_START": str(settings.retrain_warm_start).lower(),
        "LORASWAP_RETRAIN_REPLAY_RATIO": str(settings.retrain_replay_ratio),
        "LORASWAP_RETRAIN_FEEDBACK_REPEAT": str(settings.retrain_feedback_repeat),
        "HF_DATASETS_OFFLINE": "1",
    }
