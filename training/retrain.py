"""One retraining run, in its own low-priority process (``loraswap retrain run``).

Reads the run record and trains a candidate that **starts from the active version's
weights** on the de-duplicated labelled feedback mixed with the active version's own
training data as replay (the copy ``loraswap train --push`` put in the store; how many
original rows per feedback row, and how often each feedback row repeats, are settings
recorded in the run). Both versions are then evaluated on **two held-out sets**: the
original test split and a held-out share of the feedback (the new traffic). The candidate
is promoted only if it beats the active version on the new traffic by at least
``min_gain`` of the task's gate metric, in the metric's direction (accuracy and entity F1:
higher is better; a causal LM's eval loss: lower is better), and is not worse on the
original test split beyond that set's own sampling noise; a tie keeps the active
version, and the candidate is registered inactive with the reason. Every task goes
through the same steps; what differs (the table, how a feedback row becomes a training
row) is in :mod:`loraswap.training.retrain_data`. Everything goes into the run record.
Imports ``adapters`` and ``training`` only, never ``service``.
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

from loraswap.adapters.package import MANIFEST_FILE, TaskKind
from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import ObjectStore, open_store
from loraswap.adapters.validation import ValidationLimits
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.base_model.loading import Quantization, load_base_model
from loraswap.core.errors import AdapterNotFoundError, ConfigurationError
from loraswap.core.identity import Version
from loraswap.jobs.retrain_runs import CANCELLED, RunRecord, RunStore, now_iso
from loraswap.jobs.tenant_data import feedback_prefix
from loraswap.jobs.training_data import read_parquet_batches, upload_to_store
from loraswap.tenants.directory import TenantDirectory
from loraswap.training.config import TrainConfig
from loraswap.training.metrics import SELECTION_METRIC
from loraswap.training.package_eval import evaluate_package
from loraswap.training.retrain_bounds import check_config, check_data_store
from loraswap.training.retrain_data import (
    MIN_SELECTION_VALIDATION,
    TASK_DATA,
    DataReading,
    TaskData,
    carve_validation,
    deduplicate,
    normalised_input,
)
from loraswap.training.runner import held_out_fraction, run_training

logger = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 60.0
# The settings of the active version's training that say how its data files are read.
READING_KEYS = ("data_format", "text_column", "label_column", "max_train_samples")


@dataclass(frozen=True)
class RetrainSettings:
    """Where the run finds the store and the base model, and its knobs."""

    store_uri: str
    base_model: Path
    cache_dir: Path
    feedback_holdout: float = 0.3
    seed: int = 42
    # The candidate starts from the active version's weights (False: a fresh LoRA).
    warm_start: bool = True
    # Original training rows replayed per feedback training row (the rest is left out).
    replay_ratio: float = 1.0
    # How many times each feedback training row appears in the candidate's data.
    feedback_repeat: int = 2
    # The candidate must beat the active version on held-out new traffic by this much of
    # the gate metric (accuracy / F1 points as a fraction; eval loss in nats).
    min_gain: float = 0.01


@dataclass(frozen=True)
class RunData:
    """The candidate's training file and the held-out files both versions are judged on
    (``original``: the test split; ``new_traffic``: held-out feedback; either may be
    missing)."""

    train: Path
    heldout: dict[str, Path]
    validation: Path | None = None  # None: fewer than 2 distinct inputs to hold out
    keep_best: bool = True  # the validation is large enough to rank checkpoints


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
    threading.Thread(target=_heartbeat, args=(runs, run_id, stop), daemon=True,
                     name=f"heartbeat-{run_id}").start()
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
    run.base_version, run.task = active.key.version, manifest.task
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

    start = (registry.local_folder(run.tenant, run.adapter, active.key.version.number)
             if settings.warm_start else None)
    outcome = run_training(_candidate_config(config, run, manifest.task, data,
                                             work / "candidate", manifest.labels, settings,
                                             start))
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
    # The feedback of the tenant as it exists now (its data owner carries its immutable
    # id): a deleted tenant has none, and one re-created under its name starts empty.
    owner = TenantDirectory(store).get(run.tenant).data_owner
    rows = read_parquet_batches(store, feedback_prefix(owner, run.adapter))
    test = task_data.original(files["test"], reading, hf_cache) if "test" in files else None
    # Feedback on an input of the original test split is used on neither side (issue 23).
    test_inputs = frozenset(task_data.input_key(row) for row in test) \
        if test is not None else frozenset()
    feedback = task_data.split_feedback(rows, labels, settings.feedback_holdout,
                                        settings.seed, test_inputs)
    new_rows = deduplicate(feedback.heldout, task_data.task)
    judged = {normalised_input(row, task_data.task) for row in new_rows}
    # An input that judges the versions is never trained on, even asked again.
    fresh = [row for row in deduplicate(feedback.train, task_data.task)
             if normalised_input(row, task_data.task) not in judged]
    mix = replay_mix(len(original), len(fresh), settings)
    replay = original.shuffle(seed=settings.seed).select(range(mix["replay_original"])) \
        if mix["replay_original"] < len(original) else original
    # The validation split (checkpoint choice, drift reference) is carved out of the
    # distinct inputs before the feedback is repeated: no validation input is trained on.
    val_fraction = float(config.get("val_fraction") or 0.1)
    tables = carve_validation(
        task_data, list(replay), fresh, settings.feedback_repeat if fresh else 1,
        lambda rows: held_out_fraction(task_data.task, rows, val_fraction), settings.seed)
    train = task_data.table(tables.train)
    heldout: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    if test is not None:
        heldout["original"], sizes["original"] = work / "heldout-original.jsonl", len(test)
        test.to_json(str(heldout["original"]), lines=True)
    if new_rows:
        heldout["new_traffic"] = work / "heldout-new-traffic.jsonl"
        sizes["new_traffic"] = len(new_rows)
        task_data.table(new_rows).to_json(str(heldout["new_traffic"]), lines=True)
    if not heldout:
        raise ConfigurationError("no held-out data: the package has no test split and no "
                                 "feedback could be held out")
    n_val = len(tables.validation)
    data = RunData(work / "train.jsonl", heldout,
                   work / "validation.jsonl" if n_val else None,
                   keep_best=n_val >= MIN_SELECTION_VALIDATION)
    train.to_json(str(data.train), lines=True)
    if data.validation is not None:
        task_data.table(tables.validation).to_json(str(data.validation), lines=True)
    run.data = {
        "original_train": len(original), "feedback_train": len(feedback.train),
        "feedback_holdout": len(feedback.heldout), "feedback_dropped": feedback.dropped,
        "feedback_duplicates": feedback.duplicates + len(feedback.train) - len(fresh)
        + len(feedback.heldout) - len(new_rows),
        "feedback_in_test": feedback.in_test,
        "heldout_total": sum(sizes.values()), "heldout": sizes,
        "train_total": len(train), "validation": n_val,
        "checkpoint": "best validation evaluation" if data.keep_best else
        f"final weights (validation {n_val} < {MIN_SELECTION_VALIDATION} rows: too few "
        "to rank checkpoints)",
        "original_source": data_store,
        "mix": {**mix, "feedback_repeat": settings.feedback_repeat if fresh else 0,
                "start": "active version" if settings.warm_start else "fresh LoRA"},
    }
    return data


def replay_mix(original: int, feedback: int, settings: RetrainSettings) -> dict[str, Any]:
    """How many original rows the candidate replays beside ``feedback`` new rows: at most
    ``replay_ratio`` per feedback row (all of them without feedback)."""
    replayed = original if not feedback else min(
        original, math.ceil(settings.replay_ratio * feedback))
    return {"replay_original": replayed, "replay_ratio": settings.replay_ratio}


def _decide(run: RunRecord, registry: AdapterRegistry, task: TaskKind, candidate: Path,
            data: RunData, settings: RetrainSettings) -> None:
    """Evaluate both versions on both held-out sets, register the candidate, decide."""
    metric, higher = SELECTION_METRIC[task]
    run.gate_metric, run.gate_direction = metric, "higher" if higher else "lower"
    assert run.base_version is not None
    active_folder = registry.local_folder(run.tenant, run.adapter, run.base_version.number)
    run.evaluations = {"active": {}, "candidate": {}}
    for side, folder in (("active", active_folder), ("candidate", candidate)):
        for name, path in data.heldout.items():
            found = evaluate_package(folder, path, settings.base_model)
            run.evaluations[side].update({f"{name}/{k}": v for k, v in found.items()})
    promote, reason = two_set_gate(metric, higher, run.evaluations["candidate"],
                                   run.evaluations["active"], settings.min_gain)
    version, promoted, note = register_candidate(registry, run, candidate, promote)
    run.candidate_version = Version.of(version) if version is not None else None
    run.decision = "promoted" if promoted else "kept"
    run.reason = f"{reason}: " + (note or f"version {version} " + (
        "promoted" if promoted else "registered inactive"))
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
                                  run.base_version.number):
        return registered.version, True, ""
    return registered.version, False, (
        f"version {registered.version} registered inactive, not promoted: version "
        f"{run.base_version.number}, active when the run started, no longer is (an "
        "operator changed it meanwhile)")


def noise(metric: str, higher_is_better: bool, value: float, examples: float) -> float:
    """How far a version's ``metric`` on ``examples`` held-out examples moves by sampling
    alone, as the tolerance for a regression: 1.645 standard errors of the difference of
    two such scores (one-sided 95 %). Accuracy and F1: a proportion's standard error;
    eval loss: 5 % of the loss (its per-example spread is not kept)."""
    if examples < 1 or math.isnan(value):
        return math.inf
    if higher_is_better:
        p = min(max(value, 0.0), 1.0)
        return 1.645 * math.sqrt(2 * max(p * (1 - p), 0.25 / examples) / examples)
    return 0.05 * abs(value)


def two_set_gate(metric: str, higher_is_better: bool, candidate: dict[str, float],
                 active: dict[str, float], min_gain: float) -> tuple[bool, str]:
    """Promote only if the candidate beats the active version on the new traffic by at
    least ``min_gain`` and is not worse on the original test split beyond its noise; a
    tie keeps. Either set may be missing (no test split, no held-out feedback): without
    new traffic nothing can show a gain, so the active version stays."""
    sign = 1.0 if higher_is_better else -1.0
    direction = "higher" if higher_is_better else "lower"
    new_key, old_key = f"new_traffic/{metric}", f"original/{metric}"
    parts = []
    if new_key not in candidate or new_key not in active:
        return False, "no held-out feedback of the new traffic to show a gain: kept"
    gain = sign * (candidate[new_key] - active[new_key])
    n_new = int(candidate.get("new_traffic/examples", 0))
    improved = not math.isnan(gain) and gain >= min_gain
    parts.append(f"new traffic ({n_new} examples): candidate {metric} "
                 f"{candidate[new_key]:.4f} vs active {active[new_key]:.4f}, gain "
                 f"{gain:+.4f} {'>=' if improved else '<'} margin {min_gain:g} "
                 f"({direction} is better)")
    kept_original = True
    if old_key in candidate and old_key in active:
        n_old = candidate.get("original/examples", 0.0)
        tolerance = noise(metric, higher_is_better, active[old_key], n_old)
        loss = -sign * (candidate[old_key] - active[old_key])
        kept_original = not math.isnan(loss) and loss <= tolerance
        parts.append(f"original test split ({int(n_old)} examples): candidate "
                     f"{candidate[old_key]:.4f} vs active {active[old_key]:.4f}, "
                     f"regression {max(loss, 0.0):.4f} "
                     f"{'<=' if kept_original else '>'} noise {tolerance:.4f}")
    return improved and kept_original, "; ".join(parts)


def _download(store: ObjectStore, key: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / key.rsplit("/", 1)[-1]
    store.download(key, target)
    return target


def _candidate_config(config: dict[str, Any], run: RunRecord, task: TaskKind, data: RunData,
                      output: Path, labels: list[str] | None,
                      settings: RetrainSettings, start: Path | None) -> TrainConfig:
    """The active version's settings, on the run's JSONL tables (default columns: training
    and validation), starting from ``start``'s weights (None: a fresh LoRA)."""
    values = {k: v for k, v in config.items() if k in TrainConfig.model_fields}
    values.update(task=task.value, data=data.train, data_format="jsonl", text_column=None,
                  label_column=None, eval_data=data.validation, test_data=None,
                  keep_best=data.keep_best, output=output,
                  base_model=settings.base_model, labels=labels, progress=False,
                  max_train_samples=None, tenant=run.tenant, name=run.adapter,
                  baseline=False, resume=False, checkpoint_dir=None, init_adapter=start)
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
