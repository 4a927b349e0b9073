"""One retraining run, in its own low-priority process (``loraswap retrain run``).

Reads the run record, trains a candidate from the active version's training data (the
copy ``loraswap train --push`` put in the store) plus the labelled feedback, evaluates the
candidate and the active version on the same held-out set (the original test split plus a
held-out share of the feedback), and promotes the candidate only if it is at least as
good on the gate metric; otherwise it registers it inactive with the reason. Everything
goes into the run record. Imports ``adapters`` and ``training`` only, never ``service``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.base_model import Quantization, load_base_model
from adapters.errors import ConfigurationError
from adapters.package import MANIFEST_FILE, TaskKind
from adapters.registry import AdapterRegistry
from adapters.retrain_runs import RunRecord, RunStore, now_iso
from adapters.store import ObjectStore, open_store
from adapters.training_data import read_parquet_batches, upload_to_store
from adapters.validation import BaseModelFingerprint, ValidationLimits
from training.config import TrainConfig
from training.datasets_io import concatenate, from_rows, text_label_table
from training.metrics import SELECTION_METRIC
from training.package_eval import evaluate_package
from training.runner import run_training

logger = logging.getLogger(__name__)
FEEDBACK_PREFIX = "feedback/"


@dataclass(frozen=True)
class RetrainSettings:
    """Where the run finds the store and the base model, and its knobs."""

    store_uri: str
    base_model: Path
    cache_dir: Path
    feedback_holdout: float = 0.3
    seed: int = 42


def execute_run(run_id: str, settings: RetrainSettings) -> RunRecord:
    """Run ``run_id`` to its decision; the record is saved at each stage, the adapter
    released at the end whatever happens."""
    store = open_store(settings.store_uri)
    runs = RunStore(store)
    run = runs.get(run_id)
    run.status, run.started_at = "running", now_iso()
    runs.save(run)
    work = Path(tempfile.mkdtemp(prefix=f"loraswap-retrain-{run_id}-"))
    try:
        _execute(run, store, settings, work, runs)
        run.status = "finished"
    except Exception as exc:
        logger.exception("retrain run %s failed", run_id)
        run.status, run.decision = "failed", "failed"
        run.reason = f"{type(exc).__name__}: {exc}"
    finally:
        run.finished_at = now_iso()
        runs.save(run)
        runs.release(run.tenant, run.adapter, run.id)
        shutil.rmtree(work, ignore_errors=True)
    return run


def _registry(store: ObjectStore, settings: RetrainSettings) -> AdapterRegistry:
    loaded = load_base_model(settings.base_model, Quantization.BF16, "cpu")
    base = BaseModelFingerprint.from_loaded(loaded.info, loaded.model.config.to_dict())
    return AdapterRegistry(store, base, ValidationLimits(), settings.cache_dir,
                           refresh_seconds=0.5)


def _execute(run: RunRecord, store: ObjectStore, settings: RetrainSettings, work: Path,
             runs: RunStore) -> None:
    registry = _registry(store, settings)
    active = registry.active(run.tenant, run.adapter)
    run.base_version = active.version
    manifest = active.manifest
    if manifest.task is not TaskKind.SEQ_CLS or not manifest.labels:
        raise ConfigurationError(f"retraining supports seq-cls adapters so far, not "
                                 f"{manifest.task}")
    training = manifest.training or {}
    data_store: dict[str, str] = training.get("data_store") or {}
    if "train" not in data_store:
        raise ConfigurationError(
            "the active version records no training data in the store (train it with "
            "`loraswap train --push`, which uploads a copy beside the package)")
    config: dict[str, Any] = dict(training.get("config") or {})
    text_col, label_col = config.get("text_column") or "text", config.get("label_column") or \
        "label"
    hf_cache = work / "hf-cache"
    files = {role: _download(store, key, work / "data") for role, key in data_store.items()}
    labels = list(manifest.labels)
    original = text_label_table(files["train"], text_col, label_col, hf_cache)
    limit = config.get("max_train_samples")
    if limit and len(original) > limit:
        original = original.shuffle(seed=settings.seed).select(range(int(limit)))
    feedback_train, feedback_holdout, dropped = _feedback(store, run, labels, settings)
    train_table = concatenate([original, from_rows(feedback_train)]) if feedback_train else \
        original
    held_tables = [from_rows(feedback_holdout)] if feedback_holdout else []
    if "test" in files:
        held_tables.insert(0, text_label_table(files["test"], text_col, label_col, hf_cache))
    if not held_tables:
        raise ConfigurationError("no held-out data: the package has no test split and no "
                                 "feedback could be held out")
    heldout = concatenate(held_tables) if len(held_tables) > 1 else held_tables[0]
    train_path, heldout_path = work / "train.jsonl", work / "heldout.jsonl"
    train_table.to_json(str(train_path), lines=True)
    heldout.to_json(str(heldout_path), lines=True)
    run.data = {
        "original_train": len(original), "feedback_train": len(feedback_train),
        "feedback_holdout": len(feedback_holdout), "feedback_dropped_unknown_label": dropped,
        "heldout_total": len(heldout), "train_total": len(train_table),
        "original_source": data_store,
    }
    runs.save(run)

    cfg = _candidate_config(config, run, train_path, work / "candidate", labels, settings)
    outcome = run_training(cfg)
    data_key = upload_to_store(store, run.tenant, run.adapter, train_path, "train.jsonl")
    record_data_store(outcome.output, {"train": data_key, **(
        {"test": data_store["test"]} if "test" in data_store else {})}, "text", "label")

    metric, higher = SELECTION_METRIC[manifest.task]
    run.gate_metric = metric
    active_folder = registry.local_folder(run.tenant, run.adapter, active.version)
    run.evaluations = {
        "active": evaluate_package(active_folder, heldout_path, settings.base_model),
        "candidate": evaluate_package(outcome.output, heldout_path, settings.base_model),
    }
    candidate, current = run.evaluations["candidate"][metric], run.evaluations["active"][metric]
    promote = candidate >= current if higher else candidate <= current
    registered = registry.register(run.tenant, run.adapter, outcome.output, activate=promote)
    run.candidate_version = registered.version
    run.decision = "promoted" if promote else "kept"
    comparison = ">=" if promote == higher else "<"
    run.reason = (f"candidate {metric} {candidate:.4f} {comparison} active {current:.4f} on "
                  f"{len(heldout)} held-out examples: "
                  + (f"version {registered.version} promoted" if promote else
                     f"version {registered.version} registered inactive"))
    logger.info("retrain run %s: %s", run.id, run.reason)


def _download(store: ObjectStore, key: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / key.rsplit("/", 1)[-1]
    store.download(key, target)
    return target


def _feedback(store: ObjectStore, run: RunRecord, labels: list[str],
              settings: RetrainSettings) -> tuple[list[dict[str, str]], list[dict[str, str]],
                                                  int]:
    """Labelled feedback of the adapter (latest per input), split train / held out."""
    rows = read_parquet_batches(store, f"{FEEDBACK_PREFIX}{run.tenant}/{run.adapter}/")
    latest: dict[tuple[str, int], dict[str, str]] = {}
    dropped = 0
    for row in rows:
        label = row.get("label")
        if label is None:
            continue
        if label not in labels:
            dropped += 1
            continue
        latest[(row["prediction_id"], int(row.get("index") or 0))] = {
            "text": str(row["input"]), "label": str(label)}
    items = list(latest.values())
    random.Random(settings.seed).shuffle(items)
    cut = round(len(items) * settings.feedback_holdout)
    return items[cut:], items[:cut], dropped


def _candidate_config(config: dict[str, Any], run: RunRecord, data: Path, output: Path,
                      labels: list[str], settings: RetrainSettings) -> TrainConfig:
    values = {k: v for k, v in config.items() if k in TrainConfig.model_fields}
    values.update(task="seq-cls", data=data, data_format="jsonl", text_column="text",
                  label_column="label", eval_data=None, test_data=None, output=output,
                  base_model=settings.base_model, labels=labels, progress=False,
                  max_train_samples=None, tenant=run.tenant, name=run.adapter,
                  baseline=False, resume=False, checkpoint_dir=None)
    return TrainConfig.model_validate(values)


def record_data_store(package: Path, data_store: dict[str, str], text_column: str,
                      label_column: str) -> None:
    """Write where the training data lies into the package manifest's ``training``."""
    path = package / MANIFEST_FILE
    manifest = json.loads(path.read_text("utf-8"))
    training = manifest.setdefault("training", {})
    training["data_store"] = data_store
    config = training.setdefault("config", {})
    config["text_column"], config["label_column"] = text_column, label_column
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
