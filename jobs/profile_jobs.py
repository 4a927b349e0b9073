"""Profiling jobs: a drift reference for a version registered without ``profile.json``.

A registered version is immutable (its manifest lists the sha256 of every package file),
so a profile computed later is not added to the package: it is a separate object beside
the version's files, deleted with the version. Keys, under the version's prefix
``adapters/{tenant}/{name}/versions/{v:08d}/``:

* ``reference/{sha256[:16]}-{file}``: the uploaded reference dataset;
* ``profile-job.json``: the version's latest job (:class:`ProfileJob`), rewritten by the
  service (queued) and by the job process (running, done, failed), each write a
  compare-and-swap that only the job the record names may make;
* ``uploaded-profile.json``: the computed ``profile.json`` document (written atomically,
  before the record says ``done``).

The service's reference loader reads the package's own ``profile.json`` when it has one,
else ``uploaded-profile.json``. Shared by the service (upload, status) and training (the
job process), which never import each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraswap.adapters.registry import version_prefix
from loraswap.adapters.store import ObjectStore, update_object
from loraswap.adapters.store.base import StoreKeyMissing
from loraswap.core.errors import ConflictError
from loraswap.core.identity import Version
from loraswap.jobs.retrain_runs import new_run_id, now_iso

JOB_FILE = "profile-job.json"
UPLOADED_PROFILE_FILE = "uploaded-profile.json"
REFERENCE_FOLDER = "reference/"
STALE_SECONDS = 3600.0
"""A queued or running job whose record has not changed for this long is taken to have
died (its process killed): a new upload may replace it. The job rewrites its record when
it starts and ends; profiling a few thousand inputs takes minutes, not an hour."""

JobStatus = Literal["queued", "running", "done", "failed"]


class ProfileJob(BaseModel):
    """One profiling job of one adapter version, from upload to its result."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=new_run_id)
    tenant: str
    adapter: str
    version: Version
    status: JobStatus = "queued"
    filename: str
    reference_key: str
    text_column: str
    label_column: str | None = Field(
        default=None, description="As asked (None: 'label' when the file has one).")
    max_rows: int
    launcher: str = "local"
    created_at: str = Field(default_factory=now_iso)
    updated_at: str = Field(default_factory=now_iso)
    started_at: str | None = None
    finished_at: str | None = None
    rows: dict[str, int] = Field(default_factory=dict)
    labels_from: str | None = None
    reason: str | None = None

    @property
    def active(self) -> bool:
        """Queued or running, and its record changed within :data:`STALE_SECONDS`."""
        if self.status not in ("queued", "running"):
            return False
        age = datetime.now(UTC) - datetime.fromisoformat(self.updated_at)
        return age.total_seconds() < STALE_SECONDS


def reference_key(tenant: str, adapter: str, version: int, filename: str,
                  data: bytes) -> str:
    """The store key of an uploaded reference file (content-addressed)."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"{version_prefix(tenant, adapter, version)}{REFERENCE_FOLDER}{digest}-{filename}"


class ProfileJobs:
    """Job records and computed profiles of adapter versions in the store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def _job_key(tenant: str, adapter: str, version: int) -> str:
        return version_prefix(tenant, adapter, version) + JOB_FILE

    @staticmethod
    def _profile_key(tenant: str, adapter: str, version: int) -> str:
        return version_prefix(tenant, adapter, version) + UPLOADED_PROFILE_FILE

    def get(self, tenant: str, adapter: str, version: int) -> ProfileJob | None:
        """The version's latest job, None when it never had one."""
        try:
            raw = self.store.get(self._job_key(tenant, adapter, version))
        except StoreKeyMissing:
            return None
        return ProfileJob.model_validate_json(raw)

    def submit(self, job: ProfileJob) -> ProfileJob:
        """Record ``job`` as the version's job; 409 while another one is active."""
        def replace(raw: bytes | None) -> bytes:
            if raw is not None:
                current = ProfileJob.model_validate_json(raw)
                if current.active:
                    raise ConflictError(
                        f"profiling job {current.id} of {job.tenant}/{job.adapter}@"
                        f"{job.version} is {current.status}; wait for it to end")
            return job.model_dump_json(indent=2).encode()

        update_object(self.store, self._job_key(job.tenant, job.adapter, job.version.number),
                      replace)
        return job

    def update(self, job: ProfileJob, change: Callable[[ProfileJob], None]) -> ProfileJob | None:
        """Apply ``change`` to the stored record if it still names ``job``; the new record,
        or None when a later upload replaced the job (or the version was deleted)."""
        result: list[ProfileJob | None] = [None]

        def apply(raw: bytes | None) -> bytes | None:
            current = ProfileJob.model_validate_json(raw) if raw is not None else None
            if current is None or current.id != job.id:
                result[0] = None
                return raw
            change(current)
            current.updated_at = now_iso()
            result[0] = current
            return current.model_dump_json(indent=2).encode()

        update_object(self.store, self._job_key(job.tenant, job.adapter, job.version.number),
                      apply)
        return result[0]

    def save_profile(self, tenant: str, adapter: str, version: int,
                     profile: dict[str, Any]) -> None:
        """Write the computed profile (atomically: readers see all of it or nothing)."""
        self.store.put(self._profile_key(tenant, adapter, version),
                       json.dumps(profile).encode())

    def read_profile(self, tenant: str, adapter: str, version: int) -> dict[str, Any] | None:
        """The computed profile of a version, None when none was computed."""
        try:
            raw = self.store.get(self._profile_key(tenant, adapter, version))
        except StoreKeyMissing:
            return None
        document: dict[str, Any] = json.loads(raw)
        return document
