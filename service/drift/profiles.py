"""The drift reference of a version registered without ``profile.json`` (plain PEFT
imports, older packages), computed from a reference dataset the operator uploads.

The upload is checked here, before anything is stored (unknown version: 404; a package
that has its own profile: 409; bad file type, unreadable or empty file, missing column,
labels the adapter lacks: 400 naming the problem), then stored beside the version and a
profiling job is launched: ``loraswap profile run`` in its own ``nice 19`` process or a
Kubernetes Job (``service/drift/launchers.py``), never the event loop or the engine thread.
The job writes the profile beside the version; the drift monitor picks it up
(``DriftMonitor.refresh_references``). One job per version at a time (409 while one is
queued or running).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from loraswap.adapters.package import PROFILE_FILE, AdapterManifest
from loraswap.adapters.registry import AdapterRegistry, check_version_number
from loraswap.core.errors import ConflictError
from loraswap.jobs.profile_jobs import ProfileJob, ProfileJobs, reference_key
from loraswap.jobs.reference_data import (
    ReferenceColumns,
    ReferenceRows,
    check_file_name,
    read_reference,
)
from loraswap.jobs.retrain_runs import now_iso
from loraswap.service.drift.launchers import ProfileLauncher

logger = logging.getLogger(__name__)


class ProfileService:
    """Starts profiling jobs from uploaded reference files and shows their state."""

    def __init__(self, registry: AdapterRegistry, launcher: ProfileLauncher) -> None:
        self.registry = registry
        self.jobs = ProfileJobs(registry.store)
        self.launcher = launcher

    def _manifest(self, tenant: str, name: str, version: int) -> AdapterManifest:
        return self.registry.version(tenant, name, check_version_number(version)).manifest

    def submit(self, tenant: str, name: str, version: int, filename: str, data: bytes,
               columns: ReferenceColumns) -> ProfileJob:
        """Check the reference file, store it and launch its job (blocking: call it off
        the event loop); the job's record."""
        manifest = self._manifest(tenant, name, version)
        if PROFILE_FILE in manifest.files:
            raise ConflictError(
                f"{tenant}/{name}@{version} has its own profile.json from its package, which "
                "drift monitoring uses; an uploaded reference would be ignored")
        check_file_name(filename)
        current = self.jobs.get(tenant, name, version)
        if current is not None and current.active:  # before storing anything
            raise ConflictError(f"profiling job {current.id} of {tenant}/{name}@{version} "
                                f"is {current.status}; wait for it to end")
        rows = self._check(filename, data, manifest, columns)
        key = reference_key(tenant, name, version, filename, data)
        if not self.registry.store.exists(key):
            self.registry.store.put(key, data)
        job = self.jobs.submit(ProfileJob(
            tenant=tenant, adapter=name, version=version, filename=filename,
            reference_key=key, text_column=columns.text, label_column=columns.label,
            max_rows=columns.max_rows, launcher=self.launcher.name,
            rows={"in_file": rows.rows_in_file, "used": len(rows.texts),
                  "dropped_empty": rows.dropped}))
        try:
            where = self.launcher.launch_profile(job)
        except Exception as exc:
            logger.exception("launching profiling job %s failed", job.id)
            reason = f"launch failed: {exc}"
            return self.jobs.update(job, lambda record: _launch_failed(record, reason)) or job
        logger.info("profiling job %s of %s/%s@%d launched (%s)", job.id, tenant, name,
                    version, where)
        return job

    @staticmethod
    def _check(filename: str, data: bytes, manifest: AdapterManifest,
               columns: ReferenceColumns) -> ReferenceRows:
        """Read the file as the job will: every problem is a 400 now, not a failed job."""
        with tempfile.TemporaryDirectory(prefix="loraswap-reference-") as tmp:
            path = Path(tmp) / filename
            path.write_bytes(data)
            return read_reference(path, manifest.task, manifest.labels, columns,
                                  Path(tmp) / "hf-cache", name=filename)

    def status(self, tenant: str, name: str, version: int) -> dict[str, Any]:
        """Where the version's drift reference comes from, and its latest job."""
        manifest = self._manifest(tenant, name, version)
        job = self.jobs.get(tenant, name, version)
        if PROFILE_FILE in manifest.files:
            source: str | None = "package"
        elif self.jobs.read_profile(tenant, name, version) is not None:
            source = "uploaded"
        else:
            source = None
        return {"tenant": tenant, "adapter": name, "version": version, "profile": source,
                "job": job.model_dump(mode="json") if job is not None else None}


def _launch_failed(job: ProfileJob, reason: str) -> None:
    job.status, job.finished_at, job.reason = "failed", now_iso(), reason
