"""One training run end to end: data, base model, LoRA, loop, evaluation, package."""

from __future__ import annotations

import importlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loraswap.adapters.lora_format import WEIGHTS_FILE
from loraswap.adapters.package import AdapterManifest, TaskKind
from loraswap.base_model.families import stop_token_ids
from loraswap.base_model.loading import LoadedBaseModel, Quantization, load_base_model
from loraswap.base_model.precision import CpuFeatures, PrecisionChoice, choose_cpu_precision
from loraswap.core.errors import ConfigurationError, QuantizationUnavailableError
from loraswap.training.config import TrainConfig
from loraswap.training.data import Example, label_names, load_examples, split_examples, subsample
from loraswap.training.evaluate import evaluate
from loraswap.training.loop import StepCallback, train_loop
from loraswap.training.package_writer import prepare_output, write_package
from loraswap.training.profile import REFERENCE_SAMPLE, build_profile
from loraswap.training.tasks import Encoded, TaskModel, build_task_model, encode_all

logger = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """The written package and how long the run took."""

    output: Path
    manifest: AdapterManifest
    seconds: float


@dataclass
class Splits:
    """Examples per split (test may be empty)."""

    train: list[Example]
    val: list[Example]
    test: list[Example]
    val_source: str
    # Every held-out example (validation before --max-eval-samples): the drift profile's
    # reference sample is drawn from these only, never from training examples.
    held_out: list[Example]


def require_qlora() -> None:
    """Fail clearly when bitsandbytes 4-bit cannot be used (never fall back to bf16)."""
    try:
        bnb = importlib.import_module("bitsandbytes")
        getattr(bnb.nn, "Linear4bit")  # noqa: B009 - a missing attribute means no 4-bit
    except Exception as exc:
        raise QuantizationUnavailableError(
            f"--qlora needs bitsandbytes with 4-bit (NF4) support, which is not usable here "
            f"({type(exc).__name__}: {exc}); install bitsandbytes or train without --qlora "
            "(bf16/fp32 LoRA). Refusing to train a non-quantized base silently."
        ) from exc


def read_splits(cfg: TrainConfig) -> Splits:
    """Train/validation/test examples; a seeded split when no eval data is given."""
    def read(path: Path) -> list[Example]:
        return load_examples(path, cfg.task, cfg.data_format, cfg.text_column,
                             cfg.label_column)

    examples = read(cfg.data)
    if cfg.eval_data is not None:
        train, val, source = examples, read(cfg.eval_data), str(cfg.eval_data)
    else:
        fraction = held_out_fraction(cfg.task, len(examples), cfg.val_fraction)
        train, val = split_examples(examples, fraction, cfg.seed)
        source = f"{fraction:.3g} of {cfg.data} (seed {cfg.seed})"
    test = read(cfg.test_data) if cfg.test_data is not None else []
    return Splits(subsample(train, cfg.max_train_samples, cfg.seed),
                  subsample(val, cfg.max_eval_samples, cfg.seed), test, source, val)


def held_out_fraction(task: TaskKind, rows: int, val_fraction: float) -> float:
    """The share of ``rows`` held out: ``val_fraction``, raised for classifiers until the
    held-out slice holds the drift profile's whole reference sample (``REFERENCE_SAMPLE``
    inputs), but never more than a quarter of the data. With less, the reference is
    smaller and the service's alarm levels are wider (``/admin/drift`` says so)."""
    if task is TaskKind.CAUSAL_LM or rows < 1:
        return val_fraction
    wanted = min(REFERENCE_SAMPLE, rows // 4)
    return max(val_fraction, wanted / rows)


def base_quantization(cfg: TrainConfig, cpu: CpuFeatures | None = None) -> PrecisionChoice:
    """The base model's quantization for ``cfg`` and why (``--precision auto``: from the CPU,
    see :mod:`loraswap.base_model.precision`; ``cpu`` defaults to this machine's features)."""
    if cfg.qlora:
        return PrecisionChoice(Quantization.NF4.value, "nf4: --qlora")
    return choose_cpu_precision(cfg.precision, cpu or CpuFeatures.detect(),
                                source="--precision")


def load_base(cfg: TrainConfig) -> LoadedBaseModel:
    """The base model in the precision the run asks for (NF4 for QLoRA)."""
    if cfg.qlora:
        require_qlora()
    choice = base_quantization(cfg)
    logger.info("training precision %s", choice.reason)
    return load_base_model(cfg.base_model, Quantization(choice.value), "cpu")


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def run_training(cfg: TrainConfig, on_step: StepCallback | None = None) -> TrainOutcome:
    """Train per ``cfg`` and write the package to ``cfg.output``."""
    started = time.perf_counter()
    cfg = cfg.resolved()
    if cfg.qlora:
        require_qlora()
    prepare_output(cfg.output)
    splits = read_splits(cfg)
    labels = label_names(cfg.task, splits.train + splits.val, cfg.labels)
    loaded = load_base(cfg)
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id)
    tokenizer.padding_side = "right"
    torch.manual_seed(cfg.seed)
    task_model = build_task_model(cfg, loaded, labels)
    if cfg.init_adapter is not None:
        start_from(task_model, cfg.init_adapter)
    train, val, test = (encode_all(cfg.task, tokenizer, part, labels, cfg.length)
                        for part in (splits.train, splits.val, splits.test))
    held_out = val if len(splits.held_out) == len(splits.val) else encode_all(
        cfg.task, tokenizer, splits.held_out, labels, cfg.length)
    logger.info("train %d, validation %d (%s), test %d examples; labels: %s",
                len(train), len(val), splits.val_source, len(test),
                "-" if labels is None else len(labels))

    metrics: dict[str, float] = {}
    if cfg.baseline:
        # The untrained adapter (LoRA B = 0, fresh head): the base model's zero-shot figure.
        # On the test set when there is one, else on validation (one pass, not two).
        prefix, data = ("baseline_test_", test) if test else ("baseline_", val)
        metrics.update(_prefixed(prefix, _eval(cfg, task_model, data, labels, pad_id)))
    loop_started = time.perf_counter()
    result = train_loop(cfg, task_model, train, val, labels, pad_id, on_step)
    train_seconds = time.perf_counter() - loop_started
    final = evaluate(task_model, cfg.task, val, labels, cfg.batch, pad_id)
    metrics.update(final.metrics)
    if test:
        metrics.update(_prefixed("test_", _eval(cfg, task_model, test, labels, pad_id)))
    profile = build_profile(
        cfg.task, task_model, train, labels, pad_id, cfg.batch, cfg.seed,
        stop_ids=stop_token_ids(loaded.model, tokenizer), held_out=held_out,
        answer_confidences=final.confidences if cfg.task is TaskKind.CAUSAL_LM else ())
    training = _training_record(cfg, loaded, result.steps, result.epochs, result.stopped_early,
                                len(train), len(val), len(test), splits.val_source,
                                train_seconds, result.history)
    manifest = write_package(cfg.output, task_model.model, cfg, loaded.info, labels, metrics,
                             training, profile)
    # The package is complete: the checkpoint has served its purpose.
    shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    logger.info("wrote %s in %.0fs: %s", cfg.output, seconds,
                ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return TrainOutcome(cfg.output, manifest, seconds)


def start_from(task_model: TaskModel, package: Path) -> None:
    """Load a package's LoRA and head weights into the fresh task model (a retraining
    candidate continues from the active version instead of from scratch)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(task_model.model,
                                       load_file(str(package / WEIGHTS_FILE)))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ConfigurationError(f"{package} does not fit this adapter's LoRA settings "
                                 f"(unexpected weights: {unexpected[:3]})")
    logger.info("starting from the weights of %s", package)


def _eval(cfg: TrainConfig, task_model: TaskModel, data: list[Encoded],
          labels: list[str] | None, pad_id: int) -> dict[str, float]:
    return evaluate(task_model, cfg.task, data, labels, cfg.batch, pad_id).metrics


def _training_record(cfg: TrainConfig, loaded: LoadedBaseModel, steps: int, epochs: float,
                     stopped_early: bool, n_train: int, n_val: int, n_test: int,
                     val_source: str, seconds: float,
                     history: list[dict[str, float]]) -> dict[str, Any]:
    """The ``training`` section of the manifest: settings, data sizes and the run."""
    settings = cfg.model_dump(mode="json", exclude={"tenant", "name", "progress", "resume",
                                                    "checkpoint_dir"})
    return {
        "config": settings,
        "base_weights": loaded.info.weight_format,
        "steps": steps,
        "epochs": round(epochs, 3),
        "stopped_early": stopped_early,
        "examples": {"train": n_train, "validation": n_val, "test": n_test},
        "validation_source": val_source,
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "history": history,
    }
