"""Registering a plain PEFT folder: the manifest loraswap builds for it, and why.

Most adapters are trained elsewhere (transformers Trainer, TRL, Unsloth, Axolotl) and
arrive as ``adapter_config.json`` + ``adapter_model.safetensors`` without a
``loraswap.json``. :func:`synthesize_manifest` builds one from what the folder says and
what the caller adds (:class:`ManifestDefaults`), and records, field by field, where each
value came from (the manifest's ``inferred``), so the registration answer and the admin
listing show what was inferred. The synthesized manifest then goes through every
validation rule, exactly as a written one does.

Base model: the folder cannot prove which weights it was trained on (PEFT records only a
name or a path), so it is checked against the *served* base by shapes (every factor and
the head, the layer count) and, where ``base_model_name_or_path`` is present, by name:
its last path segment must name the served base (case-insensitive, quantized-copy
suffixes such as ``-bnb-4bit`` ignored). A different name is refused (422), because an
adapter of another model with the same shapes (e.g. the non-instruct sibling) would
serve silently worse answers; ``ignore_base_name`` accepts it on shapes alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraswap.adapters.lora_format import CONFIG_FILE
from loraswap.adapters.package import (
    AdapterManifest,
    TaskKind,
    package_file_digests,
    parse_manifest,
)
from loraswap.adapters.peft_config import base_name_key
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import AdapterIncompatibleError, AdapterValidationError


@dataclass(frozen=True)
class ManifestDefaults:
    """How to accept a plain PEFT folder (no ``loraswap.json``): what the caller vouches for.

    The manifest is synthesized with ``task`` (default: from PEFT's ``task_type``),
    ``labels`` (required for seq-cls / token-cls, in head order), the *served* base model
    (checked by shapes and ``base_model_name_or_path``, see the module doc;
    ``ignore_base_name`` skips the name), the LoRA summary from ``adapter_config.json`` and
    the sha256 of the files present. When the package has its own ``loraswap.json``, that
    manifest is used; a ``task`` or ``labels`` given here must then agree with it.
    """

    task: TaskKind | None = None
    labels: tuple[str, ...] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    ignore_base_name: bool = False

    @classmethod
    def from_caller(cls, task: TaskKind | None, labels: list[str] | None,
                    ignore_base_name: bool) -> ManifestDefaults:
        """What an upload or ``loraswap adapters push`` supplies (empty labels: none)."""
        return cls(task=task, labels=tuple(labels) if labels else None,
                   ignore_base_name=ignore_base_name)


def task_of_peft(peft: dict[str, Any]) -> TaskKind:
    """The task of a PEFT config's ``task_type`` (absent: causal-lm); 422 if unsupported."""
    task = TaskKind.from_peft_task_type(peft.get("task_type"))
    if task is None:
        supported = ", ".join(kind.peft_task_type for kind in TaskKind)
        raise AdapterIncompatibleError(
            f"{CONFIG_FILE}: task_type {peft.get('task_type')!r} is not supported (expected "
            f"one of {supported})")
    return task


def _task_origin(peft: dict[str, Any], defaults: ManifestDefaults) -> tuple[TaskKind, str]:
    peft_task = task_of_peft(peft)
    if defaults.task is not None:
        # Must still agree with task_type: validation rule 15 refuses a mismatch.
        return defaults.task, "given by the caller"
    if peft.get("task_type"):
        return peft_task, f"from {CONFIG_FILE} task_type {peft['task_type']!r}"
    return peft_task, f"{CONFIG_FILE} has no task_type, so causal-lm (PEFT's default)"


def _base_origin(peft: dict[str, Any], base: BaseModelFingerprint,
                 defaults: ManifestDefaults) -> str:
    """How the base was matched; 422 when ``base_model_name_or_path`` names another model."""
    shapes = (f"the served base {base.name}: layer count and every factor's and head's "
              "shape are checked against it")
    named = peft.get("base_model_name_or_path")
    if not isinstance(named, str) or not named.strip():
        return f"{shapes}; {CONFIG_FILE} names no base_model_name_or_path"
    if base_name_key(named) == base_name_key(base.name):
        return f"{shapes}; base_model_name_or_path {named!r} names it"
    if defaults.ignore_base_name:
        return (f"{shapes}; base_model_name_or_path {named!r} names another model, accepted "
                "on shapes because ignore_base_name was set")
    raise AdapterIncompatibleError(
        f"{CONFIG_FILE}: base_model_name_or_path {named!r} is not the served base "
        f"{base.name}; the shapes may fit, but an adapter trained on other weights serves "
        "wrong answers. If it was trained on these weights under another name, register it "
        "with ignore_base_name (loraswap adapters push --ignore-base-name)")


def _lora_origin(peft: dict[str, Any]) -> str:
    r, alpha = peft.get("r"), peft.get("lora_alpha")
    if peft.get("use_rslora"):
        return (f"from {CONFIG_FILE} (r={r}, lora_alpha={alpha}; use_rslora: scaling "
                "lora_alpha/sqrt(r))")
    return f"from {CONFIG_FILE} (r={r}, lora_alpha={alpha}; scaling lora_alpha/r)"


def synthesize_manifest(folder: Path, peft: dict[str, Any], base: BaseModelFingerprint,
                        defaults: ManifestDefaults) -> AdapterManifest:
    """A manifest for the plain PEFT folder ``folder`` whose config is ``peft``."""
    task, task_origin = _task_origin(peft, defaults)
    inferred = {
        "manifest": "built by loraswap: the package had no loraswap.json",
        "task": f"{task.value}: {task_origin}",
        "base_model": _base_origin(peft, base, defaults),
        "lora": _lora_origin(peft),
        "files": "sha256 of the files received",
    }
    if task.has_labels:
        if not defaults.labels:
            raise AdapterValidationError(
                f"task {task} needs a non-empty labels list: a plain PEFT folder does not "
                "carry its class names; give them in head order (`loraswap adapters push "
                "--labels a,b,c`, or the upload's labels field)")
        inferred["labels"] = "given by the caller, in head order"
    targets = peft.get("target_modules") or []
    raw: dict[str, Any] = {
        "task": task.value,
        "labels": list(defaults.labels) if defaults.labels is not None else None,
        "base_model": {"name": base.name, "weights_sha256": base.weights_sha256},
        "lora": {
            "r": peft.get("r"), "alpha": peft.get("lora_alpha"),
            "targets": [targets] if isinstance(targets, str) else list(targets),
            "dropout": peft.get("lora_dropout") or 0.0,
        },
        "metrics": dict(defaults.metrics),
        "training": dict(defaults.training),
        "files": package_file_digests(folder),
        "inferred": inferred,
    }
    return parse_manifest(json.dumps(raw), f"manifest synthesized for {folder.name}")


def check_defaults_agree(manifest: AdapterManifest, defaults: ManifestDefaults) -> None:
    """A package with its own ``loraswap.json``: a task or labels the caller also gave must
    agree with it (they are not silently ignored)."""
    if defaults.task is not None and defaults.task is not manifest.task:
        raise AdapterValidationError(
            f"task {defaults.task} was given, but the package's loraswap.json says "
            f"{manifest.task}; give no task for a package that has a manifest")
    if defaults.labels is not None and list(defaults.labels) != (manifest.labels or []):
        raise AdapterValidationError(
            f"labels {list(defaults.labels)} were given, but the package's loraswap.json "
            f"lists {manifest.labels}; give no labels for a package that has a manifest")
