"""One retraining run, in its own low-priority process (``loraswap retrain run``).

Reads the run record, trains a candidate from the active version's training data (the
copy ``loraswap train --push`` put in the store) plus the labelled feedback, evaluates the
candidate and the active version on the same held-out set (the original test split plus a
held-out share of the feedback), and promotes the candidate only if it is at least as
good on the task's gate metric, in the metric's direction (accuracy and entity F1: higher
is better; a causal LM's eval loss: lower is better); otherwise it registers it inactive
with the reason. Every task goes through the same steps; what differs (the table, how a
feedback row becomes a training row) is in :mod:`loraswap.training.retrain_data`. Everything goes
into the run record. Imports ``adapters`` and ``training`` only, never ``service``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswap.adapters.base_model import Quantization, load_base_model
from loraswap.adapters.errors import AdapterNotFoundError, ConfigurationError
from loraswap.adapters.package import MANIFEST_FILE, TaskKind
from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.retrain_runs import CANCELLED, RunRecord, RunStore, now_iso
from loraswap.adapters.store import ObjectStore, open_store
from loraswap.adapters.training_data import read_parquet_batches, upload_to_store
from loraswap.adapters.validation import BaseModelFingerprint, ValidationLimits
from loraswap.training.config import TrainConfig
from loraswap.training.datasets_io import concatenate
from loraswap.training.metrics import SELECTION_METRIC
from loraswap.training.package_eval import evaluate_package
from loraswap.training.retrain_bounds import check_config, check_data_store
from loraswap.training.retrain_data import FEEDBACK_PREFIX, TASK_DATA, DataReading, TaskData
from loraswap.training.runner import run_training

logger = logging.getLogger(__name__)
# The settings of the active version's training that say how its data files are read.
READING_KEYS = ("data_format", "text_column", "label_column", "max_train_samples")
HEARTBEAT_SECONDS = 60.0


@dataclass(frozen=True)
class RetrainSettings:
    """Where the run finds the store and the base model, and its knobs."""

    store_uri: str
    base_model: Path
    cache_dir: Path
    feedback_holdout: float = 0.3
    seed: int = 42


@dataclass(frozen=True)
class RunData:
    """The candidate's training file and the held-out file both versions are judged on."""

    train: Path
    heldout: Path
    heldout_size: int


def execute_run(run_id: str, settings: RetrainSettings) -> RunRecord:
    """Run ``run_id`` to its decision; the record is saved at each stage, the adapter
    released at the end whatever happens. A heartbeat says the process is alive (the
    service expires a run without one: LORASWAP_RETRAIN_STALE_SECONDS); a run an operator
    cancelled stops before it registers anything and keeps its cancelled record."""
    store = open_store(settings.store_uri)
    runs = RunStore(store)
    run = runs.get(run_id)
    if runs.cancelled(run_id):
        return run
    run.status, run.started_at = "running", now_iso()
    runs.save(run)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(runs, run_id, stop), daemon=True,
                            name=f"heartbeat-{run_id}")
    beat.start()
    work = Path(tempfile.mkdtemp(prefix=f"loraswap-retrain-{run_id}-"))
    try:
        _execute(run, store, settings, work, runs)
        run.status = "finished"
    except Exception as exc:
        logger.exception("retrain run %s failed", run_id)
        run.status, run.decision = "failed", "failed"
        run.reason = f"{type(exc).__name__}: {exc}"
    finally:
        stop.set()
        run.finished_at = now_iso()
        if runs.cancelled(run_id):
            run.status, run.decision, run.reason = "failed", "failed", CANCELLED
        runs.save(run)
        runs.release(run.tenant, run.adapter, run.id)
        shutil.rmtree(work, ignore_errors=True)
    return run


def _heartbeat(runs: RunStore, run_id: str, stop: threading.Event) -> None:
    """Write the run's heartbeat every HEARTBEAT_SECONDS until ``stop``."""
    while True:
        try:
            runs.heartbeat(run_id)
        except Exception:  # a store hiccup: the next beat may pass (stale is 15 beats)
            logger.warning("retrain run %s: heartbeat failed", run_id, exc_info=True)
        if stop.wait(HEARTBEAT_SECONDS):
            return


def _registry(store: ObjectStore, settings: RetrainSettings) -> AdapterRegistry:
    loaded = load_base_model(settings.base_model, Quantization.BF16, "cpu")
    base = BaseModelFingerprint.from_loaded(loaded.info, loaded.model.config.to_dict())
    return AdapterRegistry(store, base, ValidationLimits(), settings.cache_dir,
                           refresh_seconds=0.5)


def _execute(run: RunRecord, store: ObjectStore, settings: RetrainSettings, work: Path,
             runs: RunStore) -> None:
    registry = _registry(store, settings)
    active = registry.active(run.tenant, run.adapter)
    manifest = active.manifest
    run.base_version, run.task = active.version, manifest.task.value
    training = manifest.training or {}
    # Written by the tenant: only its own adapter's data keys, a bounded configuration.
    data_store = check_data_store(run.tenant, run.adapter, training.get("data_store") or {})
    if "train" not in data_store:
        raise ConfigurationError(
            "the active version records no training data in the store (train it with "
            "`loraswap train --push`, which uploads a copy beside the package)")
    config: dict[str, Any] = check_config(training.get("config") or {})
    labels = list(manifest.labels or [])
    data = _prepare_data(TASK_DATA[manifest.task], store, run, data_store, config, labels,
                         settings, work)
    runs.save(run)

    outcome = run_training(_candidate_config(config, run, manifest.task, data.train,
                                             work / "candidate", manifest.labels, settings))
    # The candidate reads the same original files the next time (all feedback to date is
    # added again then); what it was trained on is kept for the record.
    trained_on = upload_to_store(store, run.tenant, run.adapter, data.train,
                                 f"retrain-{run.id}.jsonl")
    record_data_store(outcome.output, {**data_store, "trained_on": trained_on},
                      {key: config.get(key) for key in READING_KEYS})
    if runs.cancelled(run.id):
        raise ConfigurationError(CANCELLED)
    _decide(run, registry, manifest.task, outcome.output, data, settings)


def _prepare_data(task_data: TaskData, store: ObjectStore, run: RunRecord,
                  data_store: dict[str, str], config: dict[str, Any], labels: list[str],
                  settings: RetrainSettings, work: Path) -> RunData:
    """Original data plus feedback (training) and test split plus feedback (held out),
    written as JSONL; sizes go into ``run.data``."""
    hf_cache = work / "hf-cache"
    reading = DataReading.of(config)
    files = {role: _download(store, key, work / "data") for role, key in data_store.items()
             if role in ("train", "test")}
    original = task_data.original(files["train"], reading, hf_cache)
    limit = config.get("max_train_samples")
    if limit and len(original) > limit:
        original = original.shuffle(seed=settings.seed).select(range(int(limit)))
    rows = read_parquet_batches(store, f"{FEEDBACK_PREFIX}{run.tenant}/{run.adapter}/")
    held = [task_data.original(files["test"], reading, hf_cache)] if "test" in files else []
    test_inputs = frozenset(task_data.input_key(row) for table in held for row in table)
    feedback = task_data.split_feedback(rows, labels, settings.feedback_holdout,
                                        settings.seed, test_inputs)
    train = concatenate([original, task_data.table(feedback.train)]) if feedback.train \
        else original
    if feedback.heldout:
        held.append(task_data.table(feedback.heldout))
    if not held:
        raise ConfigurationError("no held-out data: the package has no test split and no "
                                 "feedback could be held out")
    heldout = concatenate(held) if len(held) > 1 else held[0]
    data = RunData(work / "train.jsonl", work / "heldout.jsonl", len(heldout))
    train.to_json(str(data.train), lines=True)
    heldout.to_json(str(data.heldout), lines=True)
    run.data = {
        "original_train": len(original), "feedback_train": len(feedback.train),
        "feedback_holdout": len(feedback.heldout), "feedback_dropped": feedback.dropped,
        "feedback_duplicates": feedback.duplicates, "feedback_in_test": feedback.in_test,
        "heldout_total": len(heldout), "train_total": len(train),
        "original_source": data_store,
    }
    return data


def _decide(run: RunRecord, registry: AdapterRegistry, task: TaskKind, candidate: Path,
            data: RunData, settings: RetrainSettings) -> None:
    """Evaluate both versions on the held-out file, register the candidate, decide."""
    metric, higher = SELECTION_METRIC[task]
    run.gate_metric, run.gate_direction = metric, "higher" if higher else "lower"
    assert run.base_version is not None
    active_folder = registry.local_folder(run.tenant, run.adapter, run.base_version)
    run.evaluations = {
        "active": evaluate_package(active_folder, data.heldout, settings.base_model),
        "candidate": evaluate_package(candidate, data.heldout, settings.base_model),
    }
    promote, comparison = gate(metric, higher, run.evaluations["candidate"][metric],
                               run.evaluations["active"][metric])
    version, promoted, note = register_candidate(registry, run, candidate, promote)
    run.candidate_version = version
    run.decision = "promoted" if promoted else "kept"
    # Examples the encoder skipped (an answer truncated away) count on neither side.
    evaluated = int(run.evaluations["candidate"].get("examples", data.heldout_size))
    run.reason = (f"{comparison} on {evaluated} held-out examples: " + (note or (
        f"version {version} " + ("promoted" if promoted else "registered inactive"))))
    logger.info("retrain run %s: %s", run.id, run.reason)


def register_candidate(registry: AdapterRegistry, run: RunRecord, candidate: Path,
                       promote: bool) -> tuple[int | None, bool, str]:
    """Register the candidate and promote it as a compare-and-swap on the version active
    when the run started: (version or None, promoted, why not when that is not the plain
    outcome). A run that ends after an operator's rollback or promotion does not undo it;
    after the adapter's deletion it registers nothing (never brings it back)."""
    assert run.base_version is not None
    try:
        registry.active(run.tenant, run.adapter)
    except AdapterNotFoundError:
        return None, False, ("the adapter was deleted (or deactivated) while the run was "
                             "running: the candidate was not registered")
    registered = registry.register(run.tenant, run.adapter, candidate, activate=False)
    if not promote:
        return registered.version, False, ""
    if registry.promote_if_active(run.tenant, run.adapter, registered.version,
                                  run.base_version):
        return registered.version, True, ""
    return registered.version, False, (
        f"version {registered.version} registered inactive, not promoted: version "
        f"{run.base_version}, active when the run started, no longer is (an operator "
        "changed it meanwhile)")


def gate(metric: str, higher_is_better: bool, candidate: float,
         active: float) -> tuple[bool, str]:
    """Whether the candidate is at least as good as the active version, and why, e.g.
    ``candidate eval_loss 1.2000 <= active 1.3000 (lower is better)``. A value that is
    not a number never wins."""
    direction = "higher" if higher_is_better else "lower"
    if math.isnan(candidate) or math.isnan(active):
        return False, (f"candidate {metric} {candidate} vs active {active}: not a number, "
                       "kept")
    promote = candidate >= active if higher_is_better else candidate <= active
    sign = {(True, True): ">=", (True, False): "<", (False, True): "<=",
            (False, False): ">"}[(higher_is_better, promote)]
    return promote, (f"candidate {metric} {candidate:.4f} {sign} active {active:.4f} "
                     f"({direction} is better)")


def _download(store: ObjectStore, key: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / key.rsplit("/", 1)[-1]
    store.download(key, target)
    return target


def _candidate_config(config: dict[str, Any], run: RunRecord, task: TaskKind, data: Path,
                      output: Path, labels: list[str] | None,
                      settings: RetrainSettings) -> TrainConfig:
    """The active version's settings, on the run's JSONL table (default columns)."""
    values = {k: v for k, v in config.items() if k in TrainConfig.model_fields}
    values.update(task=task.value, data=data, data_format="jsonl", text_column=None,
                  label_column=None, eval_data=None, test_data=None, output=output,
                  base_model=settings.base_model, labels=labels, progress=False,
                  max_train_samples=None, tenant=run.tenant, name=run.adapter,
                  baseline=False, resume=False, checkpoint_dir=None)
    return TrainConfig.model_validate(values)


def record_data_store(package: Path, data_store: dict[str, str],
                      reading: dict[str, Any] | None = None) -> None:
    """Write where the training data lies into the package manifest's ``training``.

    ``reading`` (format, columns, sample limit) replaces those settings in
    ``training.config`` when the package was trained on other files than the ones
    recorded (a retraining candidate); ``loraswap train --push`` leaves its own.
    """
    path = package / MANIFEST_FILE
    manifest = json.loads(path.read_text("utf-8"))
    training = manifest.setdefault("training", {})
    training["data_store"] = data_store
    if reading:
        training.setdefault("config", {}).update(reading)
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
