"""One profiling job, in its own low-priority process (``loraswap profile run``).

Reads the job record of an adapter version (``jobs/profile_jobs.py``), downloads the
version's package (sha256-checked) and the uploaded reference file from the store, loads
the base model with the adapter as PEFT saved it, computes ``profile.json``
(``training/reference_profile.py``) and stores it beside the version. Every write goes
through the job record's compare-and-swap: a job replaced by a later upload stops without
writing anything. Imports ``adapters`` and ``training`` only, never ``service``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loraswap.adapters.package import AttentionMode
from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import ObjectStore, open_store
from loraswap.adapters.validation import ValidationLimits
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.base_model.loading import Quantization, load_base_model
from loraswap.jobs.profile_jobs import ProfileJob, ProfileJobs
from loraswap.jobs.reference_data import ReferenceColumns, read_reference
from loraswap.jobs.retrain_runs import now_iso
from loraswap.training.config import TASK_DEFAULTS
from loraswap.training.reference_profile import (
    MAX_REFERENCE_TOKENS,
    ComputedProfile,
    profile_reference,
)
from loraswap.training.tasks import load_task_model

logger = logging.getLogger(__name__)


def cpu_precision(served: Quantization | None) -> Quantization | None:
    """The job's precision: the served one when it is a plain float format (the reference
    then sees the hidden states the service computes), else the CPU's default (the job
    runs on the CPU, where nf4/int8 kernels may be missing)."""
    return served if served in (Quantization.BF16, Quantization.FP32) else None


@dataclass(frozen=True)
class ProfileJobSettings:
    """Where the job finds the store and the base model, and how it loads the base."""

    store_uri: str
    base_model: Path
    cache_dir: Path
    quantization: Quantization | None = None  # None: bf16 where the CPU has it, else fp32
    seed: int = 42


def execute_job(tenant: str, adapter: str, version: int, job_id: str,
                settings: ProfileJobSettings) -> ProfileJob | None:
    """Run the version's job ``job_id`` to ``done`` or ``failed``; its final record, or
    None when another upload replaced it (then nothing is written)."""
    jobs = ProfileJobs(open_store(settings.store_uri))
    job = jobs.get(tenant, adapter, version)
    if job is None or job.id != job_id:
        logger.warning("profiling job %s of %s/%s@%d is not the version's job: nothing to do",
                       job_id, tenant, adapter, version)
        return None
    job = jobs.update(job, _started)
    if job is None:
        return None
    work = Path(tempfile.mkdtemp(prefix=f"loraswap-profile-{job_id}-"))
    try:
        computed, rows = _compute(job, jobs.store, settings, work)
        current = jobs.get(tenant, adapter, version)
        if current is None or current.id != job_id:  # replaced meanwhile (or deleted)
            return None
        jobs.save_profile(tenant, adapter, version, computed.document)
        final = jobs.update(job, lambda current: _finished(current, computed, rows))
    except Exception as exc:
        logger.exception("profiling job %s failed", job_id)
        reason = f"{type(exc).__name__}: {exc}"
        final = jobs.update(job, lambda current: _failed(current, reason))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if final is not None:
        logger.info("profiling job %s of %s/%s@%d: %s%s", job_id, tenant, adapter, version,
                    final.status, f" ({final.reason})" if final.reason else "")
    return final


def _started(job: ProfileJob) -> None:
    job.status, job.started_at = "running", now_iso()


def _finished(job: ProfileJob, computed: ComputedProfile, rows: dict[str, int]) -> None:
    job.status, job.finished_at = "done", now_iso()
    job.labels_from = computed.labels_from
    job.rows = rows


def _failed(job: ProfileJob, reason: str) -> None:
    job.status, job.finished_at, job.reason = "failed", now_iso(), reason


def _compute(job: ProfileJob, store: ObjectStore, settings: ProfileJobSettings,
             work: Path) -> tuple[ComputedProfile, dict[str, int]]:
    """The profile and the reference's row counts (in the file, used, dropped empty)."""
    loaded = load_base_model(settings.base_model, settings.quantization, "cpu")
    base = BaseModelFingerprint.from_loaded(loaded.info, loaded.model.config.to_dict())
    registry = AdapterRegistry(store, base, ValidationLimits(), settings.cache_dir,
                               refresh_seconds=0.5)
    manifest = registry.version(job.tenant, job.adapter, job.version.number).manifest
    folder = registry.local_folder(job.tenant, job.adapter, job.version.number)
    data = work / job.filename
    store.download(job.reference_key, data)
    rows = read_reference(data, manifest.task, manifest.labels, ReferenceColumns(
        text=job.text_column, label=job.label_column, max_rows=job.max_rows),
        work / "hf-cache", name=job.filename, seed=settings.seed)
    task_model = load_task_model(loaded, manifest.task, manifest.labels, folder,
                                 bidirectional=manifest.attention is AttentionMode.BIDIRECTIONAL)
    _, _, _, _, batch_size = TASK_DEFAULTS[manifest.task]
    trained = ((manifest.training or {}).get("config") or {}).get("max_length")
    computed = profile_reference(task_model, loaded.tokenizer, manifest.task, manifest.labels,
                                 rows, max_length=int(trained or MAX_REFERENCE_TOKENS),
                                 batch_size=batch_size, seed=settings.seed)
    return computed, {"in_file": rows.rows_in_file, "used": len(rows.texts),
                      "dropped_empty": rows.dropped}
