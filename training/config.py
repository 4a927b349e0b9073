"""Training configuration: one validated object, from a YAML/JSON file and/or CLI flags.

Task-dependent defaults (learning rate, LoRA rank, maximum length) are filled in by
:meth:`TrainConfig.resolved`, so a CSV with ``text,label`` columns trains with no file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraswap.adapters.lora_format import LLAMA_PROJECTIONS
from loraswap.adapters.package import AttentionMode, TaskKind
from loraswap.base_model.loading import DEFAULT_BASE_MODEL_DIR
from loraswap.core.errors import ConfigurationError, validated

DataFormat = Literal["auto", "jsonl", "json", "csv", "tsv", "conll"]
Precision = Literal["auto", "bf16", "fp32"]

# Per task: (learning rate, LoRA r, LoRA alpha, max_length, batch size). Classification
# heads start from random, so they get a higher rate than SFT, which only nudges the LM.
TASK_DEFAULTS: dict[TaskKind, tuple[float, int, float, int, int]] = {
    TaskKind.SEQ_CLS: (5e-4, 16, 32.0, 128, 16),
    TaskKind.TOKEN_CLS: (5e-4, 16, 32.0, 256, 16),
    TaskKind.CAUSAL_LM: (2e-4, 16, 32.0, 512, 8),
}

# A token tagger must see the words after the one it labels; a causal decoder only sees
# the ones before. On NCBI-disease (docs/quality.md, same run otherwise) test entity F1 was
# 0.63 causal and 0.81 bidirectional, so token-cls defaults to bidirectional attention.
# Seq-cls pools the last token, which already sees the whole input.
DEFAULT_ATTENTION: dict[TaskKind, AttentionMode] = {
    TaskKind.SEQ_CLS: AttentionMode.CAUSAL,
    TaskKind.TOKEN_CLS: AttentionMode.BIDIRECTIONAL,
    TaskKind.CAUSAL_LM: AttentionMode.CAUSAL,
}


class LoraSettings(BaseModel):
    """LoRA hyper-parameters; ``None`` fields take the task default."""

    model_config = ConfigDict(extra="forbid")

    r: int | None = Field(default=None, ge=1, le=256, description="LoRA rank.")
    alpha: float | None = Field(default=None, gt=0, description="LoRA alpha (scale alpha/r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    targets: list[str] = Field(default_factory=lambda: list(LLAMA_PROJECTIONS), min_length=1,
                               description="Projections that get a LoRA.")

    @model_validator(mode="after")
    def _known_targets(self) -> LoraSettings:
        unknown = [t for t in self.targets if t not in LLAMA_PROJECTIONS]
        if unknown:
            raise ValueError(
                f"unknown LoRA target(s) {unknown}; choose from {', '.join(LLAMA_PROJECTIONS)}"
            )
        return self


class TrainConfig(BaseModel):
    """Everything ``loraswap train`` needs; see ``docs/quality.md`` for examples."""

    model_config = ConfigDict(extra="forbid")

    # Each field's description is the help of its `loraswap train` flag (loraswap/train_cmd.py
    # generates the flags from these fields); a field left None says what it becomes in
    # UNSET_MEANS below.
    task: TaskKind = Field(description="What the adapter answers.")
    data: Path = Field(description="Training data (JSONL/JSON/CSV/TSV/CoNLL).")
    output: Path = Field(description="Folder to write the package into.")
    eval_data: Path | None = Field(default=None, description="Validation data.")
    test_data: Path | None = Field(default=None,
                                   description="Test data, evaluated once at the end.")
    data_format: DataFormat = Field(default="auto", description="File format of the data "
                                    "(auto: from the extension).")
    text_column: str | None = Field(default=None, description="Text column.")
    label_column: str | None = Field(default=None, description="Label column.")
    labels: list[str] | None = Field(default=None, description="Fixed label order.")
    base_model: Path = Field(default=DEFAULT_BASE_MODEL_DIR, description="Base model folder.")
    precision: Precision = Field(default="auto", description="Training precision (auto: bf16 "
                                 "where the CPU has native bf16, else fp32).")
    attention: AttentionMode | None = Field(
        default=None, description="Attention mask of seq-cls / token-cls adapters.")
    qlora: bool = Field(default=False, description="4-bit NF4 base (bitsandbytes).")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass (less memory).")
    epochs: float = Field(default=3.0, gt=0, description="Epochs.")
    max_steps: int | None = Field(default=None, ge=1,
                                  description="Optimizer steps (overrides epochs).")
    learning_rate: float | None = Field(default=None, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1,
                                description="Share of the steps spent warming up.")
    batch_size: int | None = Field(default=None, ge=1, description="Micro-batch size.")
    grad_accum: int = Field(default=1, ge=1, description="Gradient accumulation steps.")
    max_length: int | None = Field(default=None, ge=8,
                                   description="Truncate inputs to this many tokens.")
    val_fraction: float = Field(default=0.1, gt=0, lt=1,
                                description="Share held out for validation without eval_data.")
    max_train_samples: int | None = Field(default=None, ge=1,
                                          description="Seeded subsample of the training data.")
    max_eval_samples: int | None = Field(default=None, ge=1, description="Seeded subsample "
                                         "of the validation data.")
    seed: int = Field(default=42, description="Random seed.")
    patience: int | None = Field(default=None, ge=1, description="Early stop after this "
                                 "many evaluations without gain.")
    eval_every: int | None = Field(default=None, ge=1, description="Evaluate every N steps.")
    keep_best: bool = Field(default=True, description="End with the weights of the best "
                            "validation evaluation (no: the final weights).")
    baseline: bool = Field(default=False, description="Also evaluate the untrained adapter "
                           "(zero-shot) before training.")
    checkpoint_dir: Path | None = Field(default=None, description="Checkpoint folder.")
    resume: bool = Field(default=False, description="Continue from the last checkpoint.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    init_adapter: Path | None = Field(
        default=None, description="A package whose LoRA (and head) weights the training "
        "starts from instead of a fresh LoRA: a retraining candidate starts from the "
        "active version (same rank, targets and labels).")
    tenant: str | None = Field(default=None, description="Tenant recorded in the manifest.")
    name: str | None = Field(default=None, description="Adapter name recorded in the "
                             "manifest.")
    progress: bool = Field(default=True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _attention_fits_task(self) -> TrainConfig:
        if self.attention is AttentionMode.BIDIRECTIONAL and self.task is TaskKind.CAUSAL_LM:
            raise ValueError("attention 'bidirectional' is for seq-cls and token-cls; "
                             "a causal-lm adapter generates and needs 'causal'")
        return self

    def resolved(self) -> TrainConfig:
        """A copy with every task default filled in."""
        lr, r, alpha, max_length, batch = TASK_DEFAULTS[self.task]
        lora = self.lora.model_copy(
            update={"r": self.lora.r or r, "alpha": self.lora.alpha or alpha}
        )
        return self.model_copy(update={
            "learning_rate": self.learning_rate or lr,
            "max_length": self.max_length or max_length,
            "batch_size": self.batch_size or batch,
            "checkpoint_dir": self.checkpoint_dir or self.output.with_name(
                self.output.name + ".checkpoints"),
            "lora": lora,
            "attention": self.attention or DEFAULT_ATTENTION[self.task],
        })

    @property
    def lr(self) -> float:
        """Learning rate (after :meth:`resolved`)."""
        assert self.learning_rate is not None, "call resolved() first"
        return self.learning_rate

    @property
    def bidirectional(self) -> bool:
        """Whether the adapter trains (and is served) without the causal mask."""
        return self.attention is AttentionMode.BIDIRECTIONAL

    @property
    def batch(self) -> int:
        """Micro-batch size (after :meth:`resolved`)."""
        assert self.batch_size is not None, "call resolved() first"
        return self.batch_size

    @property
    def length(self) -> int:
        """Maximum tokens per example (after :meth:`resolved`)."""
        assert self.max_length is not None, "call resolved() first"
        return self.max_length

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must agree with to be resumed."""
        keep = ("task", "data", "data_format", "text_column", "label_column", "base_model",
                "precision", "attention", "qlora", "learning_rate", "batch_size", "grad_accum",
                "max_length", "val_fraction", "max_train_samples", "seed", "lora")
        values: dict[str, Any] = json.loads(self.model_dump_json(include=set(keep)))
        return values


def _per_task(index: int) -> str:
    return ", ".join(f"{task} {values[index]:g}" for task, values in TASK_DEFAULTS.items())


# What a field left None becomes (its default as help shows it): resolved() and the data
# readers fill these in.
UNSET_MEANS: dict[str, str] = {
    "eval_data": "a seeded val_fraction split of data",
    "test_data": "no test evaluation",
    "text_column": "text (tokens for token-cls)",
    "label_column": "label (tags for token-cls)",
    "labels": "sorted, O first for tags",
    "attention": ", ".join(f"{task} {mode}" for task, mode in DEFAULT_ATTENTION.items()),
    "max_steps": "from epochs",
    "learning_rate": _per_task(0),
    "lora.r": _per_task(1),
    "lora.alpha": _per_task(2),
    "max_length": _per_task(3),
    "batch_size": _per_task(4),
    "max_train_samples": "all",
    "max_eval_samples": "all",
    "patience": "no early stop",
    "eval_every": "each epoch",
    "checkpoint_dir": "OUTPUT.checkpoints",
    "init_adapter": "a fresh LoRA",
    "tenant": "none",
    "name": "none",
}


def default_text(model: type[BaseModel], name: str, path: str | None = None) -> str | None:
    """How help shows field ``name`` of ``model``'s default (None: the field is required);
    ``path`` is its dotted name in :class:`TrainConfig` (``lora.r``)."""
    field = model.model_fields[name]
    if field.is_required():
        return None
    value = field.get_default(call_default_factory=True)
    if value is None:
        return UNSET_MEANS[path or name]
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML (``.yaml``/``.yml``) or JSON config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc}") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # yaml and json raise unrelated types for bad syntax
        raise ConfigurationError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigurationError(f"config file {path} must hold a mapping of settings")
    # Relative paths in a config file mean relative to the file, not to the shell.
    for key in ("data", "eval_data", "test_data", "output", "checkpoint_dir", "base_model"):
        value = raw.get(key)
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            raw[key] = str(path.parent / value)
    return raw


def build_config(file_values: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """Merge file settings with flag overrides (flags win; ``None`` means not given)."""
    merged = dict(file_values)
    lora = dict(merged.pop("lora", None) or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("lora_"):
            lora[key.removeprefix("lora_")] = value
        else:
            merged[key] = value
    merged["lora"] = lora
    return validated(TrainConfig, merged, root="config", error=ConfigurationError,
                     prefix="invalid training configuration")
