"""Deciding whether an adapter package may be registered for the served base model.

:func:`validate_package` reads a staged package folder and either returns its (possibly
synthesized) :class:`~loraswap.adapters.package.AdapterManifest` or raises, naming the problem:
:class:`PayloadTooLargeError` for size and count limits, :class:`AdapterIncompatibleError`
when the package is well-formed but does not fit this base model or engine, and
:class:`AdapterValidationError` for anything malformed or unsafe. Nothing is written.
The rules are listed in ``docs/adapter-format.md``.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswap.adapters.compatibility import check_head, check_rank
from loraswap.adapters.lora_format import (
    CONFIG_FILE,
    PICKLE_FILES,
    WEIGHTS_FILE,
    LoraAdapterWeights,
    check_config_types,
    declared_factor_shapes,
    read_lora_adapter,
)
from loraswap.adapters.package import (
    MANIFEST_FILE,
    PACKAGE_FILES,
    AdapterManifest,
    BaseModelRef,
    parse_manifest,
    sha256_file,
)
from loraswap.adapters.peft_config import check_peft_options
from loraswap.adapters.plain_peft import ManifestDefaults as ManifestDefaults  # re-exported
from loraswap.adapters.plain_peft import check_defaults_agree, synthesize_manifest, task_of_peft
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import (
    AdapterIncompatibleError,
    AdapterValidationError,
    PayloadTooLargeError,
)

MIB = 2**20
ALLOWED_FILES = frozenset((*PACKAGE_FILES, MANIFEST_FILE))
# Extensions of serialisation formats that execute code when loaded.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass(frozen=True)
class ValidationLimits:
    """Size and shape limits applied to every package and upload."""

    max_rank: int = 64
    max_file_bytes: int = 512 * MIB
    max_upload_bytes: int = 1024 * MIB
    max_files: int = 8
    max_labels: int = 4096


def _check_entries(folder: Path, limits: ValidationLimits) -> dict[str, int]:
    """Names and sizes of the package files; refuses links, folders, unknown files, pickles."""
    if folder.is_symlink() or not folder.is_dir():
        raise AdapterValidationError(f"package {folder.name!r} is not a folder")
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    if len(entries) > limits.max_files:
        raise PayloadTooLargeError(
            f"package has {len(entries)} files, more than the limit of {limits.max_files}"
        )
    sizes: dict[str, int] = {}
    for entry in entries:
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            raise AdapterValidationError(f"{entry.name} is a link; packages hold only plain files")
        if not stat.S_ISREG(info.st_mode):
            raise AdapterValidationError(f"{entry.name} is not a plain file (folders and "
                                         "devices are not allowed in a package)")
        if entry.name in PICKLE_FILES or entry.name.lower().endswith(_PICKLE_SUFFIXES):
            raise AdapterValidationError(
                f"{entry.name} is a pickle file and is never loaded; save the adapter with "
                f"safetensors ({WEIGHTS_FILE})"
            )
        if entry.name not in ALLOWED_FILES:
            allowed = ", ".join(sorted(ALLOWED_FILES))
            raise AdapterValidationError(f"unknown file {entry.name!r} (a package holds only "
                                         f"{allowed})")
        if info.st_size > limits.max_file_bytes:
            raise PayloadTooLargeError(
                f"{entry.name} is {info.st_size} bytes, over the limit of "
                f"{limits.max_file_bytes} bytes per file"
            )
        sizes[entry.name] = info.st_size
    total = sum(sizes.values())
    if total > limits.max_upload_bytes:
        raise PayloadTooLargeError(
            f"package is {total} bytes, over the limit of {limits.max_upload_bytes} bytes"
        )
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in sizes:
            raise AdapterValidationError(f"missing {required}")
    return sizes


def _read_peft_config(folder: Path) -> dict[str, Any]:
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterValidationError(f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise AdapterValidationError(f"{CONFIG_FILE} must hold a JSON object")
    check_config_types(raw, CONFIG_FILE)  # before a manifest is synthesized from it
    return raw


def _check_files(folder: Path, manifest: AdapterManifest, present: set[str]) -> None:
    listed = set(manifest.files)
    if missing := sorted(listed - present):
        raise AdapterValidationError(
            f"{MANIFEST_FILE} lists {', '.join(missing)} but the file is missing"
        )
    if unlisted := sorted(present - listed):
        raise AdapterValidationError(
            f"{', '.join(unlisted)} is not listed in {MANIFEST_FILE} files"
        )
    for name, expected in sorted(manifest.files.items()):
        actual = sha256_file(folder / name)
        if actual != expected:
            raise AdapterValidationError(
                f"{name} has sha256 {actual}, but {MANIFEST_FILE} says {expected}"
            )


def _check_base(manifest: AdapterManifest, base: BaseModelFingerprint) -> None:
    ref: BaseModelRef = manifest.base_model
    if ref.name != base.name or ref.weights_sha256 != base.weights_sha256:
        raise AdapterIncompatibleError(
            f"adapter was trained on {ref.name} (weights sha256 {ref.weights_sha256}), but "
            f"this server runs {base.describe()}"
        )


def _check_lora(weights: LoraAdapterWeights, base: BaseModelFingerprint) -> None:
    """Targets, layers and every factor's shape against the base model."""
    config = weights.config
    for target in config.target_modules:
        if target not in base.projection_shapes:
            raise AdapterIncompatibleError(
                f"target {target!r} is not a projection of {base.name} (expected some of "
                f"{', '.join(sorted(base.projection_shapes))})"
            )
    missing_tensors = set(config.target_modules) - weights.targets
    extra_tensors = weights.targets - set(config.target_modules)
    if missing_tensors or extra_tensors:
        raise AdapterValidationError(
            f"tensors do not match target_modules {list(config.target_modules)}: "
            f"no tensors for {sorted(missing_tensors)}, unlisted tensors for "
            f"{sorted(extra_tensors)}"
        )
    for (layer, module), (lora_a, lora_b) in sorted(weights.factors.items()):
        if layer >= base.num_layers:
            raise AdapterIncompatibleError(
                f"layer {layer} {module}: {base.name} has only {base.num_layers} layers"
            )
        in_features, out_features = base.projection_shapes[module]
        want_a, want_b = (config.r, in_features), (out_features, config.r)
        if tuple(lora_a.shape) != want_a or tuple(lora_b.shape) != want_b:
            raise AdapterIncompatibleError(
                f"layer {layer} {module}: lora_A {tuple(lora_a.shape)} / lora_B "
                f"{tuple(lora_b.shape)}, expected {want_a} / {want_b} for {base.name}"
            )


def _check_declared_shapes(folder: Path, base: BaseModelFingerprint, rank: int) -> None:
    """Every factor's shape from the safetensors header, before any tensor is read or
    converted: a wrong or huge shape costs no memory."""
    for (layer, module, which), shape in sorted(declared_factor_shapes(folder).items()):
        if module not in base.projection_shapes:
            continue  # named precisely by _check_lora
        if layer >= base.num_layers:
            raise AdapterIncompatibleError(
                f"layer {layer} {module}: {base.name} has only {base.num_layers} layers"
            )
        in_features, out_features = base.projection_shapes[module]
        want = (rank, in_features) if which == "A" else (out_features, rank)
        if shape != want:
            raise AdapterIncompatibleError(
                f"layer {layer} {module}: lora_{which} {shape}, expected {want} for {base.name}"
            )


def _check_summary(manifest: AdapterManifest, weights: LoraAdapterWeights,
                   peft: dict[str, Any]) -> None:
    """The manifest's ``lora`` summary and task must agree with ``adapter_config.json``."""
    config, summary = weights.config, manifest.lora
    dropout = float(peft.get("lora_dropout") or 0.0)
    problems = []
    if summary.r != config.r:
        problems.append(f"r {summary.r} != {config.r}")
    if not math.isclose(summary.alpha, config.lora_alpha, rel_tol=1e-6):
        problems.append(f"alpha {summary.alpha} != {config.lora_alpha}")
    if sorted(summary.targets) != sorted(config.target_modules):
        problems.append(f"targets {sorted(summary.targets)} != {list(config.target_modules)}")
    if not math.isclose(summary.dropout, dropout, abs_tol=1e-9):
        problems.append(f"dropout {summary.dropout} != {dropout}")
    if problems:
        raise AdapterValidationError(
            f"{MANIFEST_FILE} lora summary disagrees with {CONFIG_FILE}: " + "; ".join(problems)
        )
    peft_task = task_of_peft(peft)
    if manifest.task is not peft_task:
        raise AdapterValidationError(
            f"{MANIFEST_FILE} says task {manifest.task}, but {CONFIG_FILE} has task_type "
            f"{peft.get('task_type')!r} ({peft_task})"
        )


def _check_head(manifest: AdapterManifest, weights: LoraAdapterWeights,
                base: BaseModelFingerprint, limits: ValidationLimits) -> None:
    labels = manifest.labels or []
    if len(labels) > limits.max_labels:
        raise PayloadTooLargeError(
            f"{len(labels)} labels, more than the limit of {limits.max_labels}"
        )
    check_head(weights, manifest.task, labels=manifest.labels if manifest.task.has_labels
               else None, hidden_size=base.hidden_size, base_name=base.name)


def validate_package(
    folder: Path,
    base: BaseModelFingerprint,
    limits: ValidationLimits,
    *,
    manifest_defaults: ManifestDefaults | None = None,
) -> AdapterManifest:
    """Check every rule for the package in ``folder``; return its manifest.

    A folder without ``loraswap.json`` is refused unless ``manifest_defaults`` is given;
    then a manifest is synthesized from it (see :class:`ManifestDefaults`).
    """
    sizes = _check_entries(folder, limits)
    peft = _read_peft_config(folder)
    check_peft_options(peft)  # before anything else is read: the refusal names the option
    if MANIFEST_FILE in sizes:
        manifest = parse_manifest((folder / MANIFEST_FILE).read_bytes(), MANIFEST_FILE)
        if manifest_defaults is not None:
            check_defaults_agree(manifest, manifest_defaults)
    elif manifest_defaults is not None:
        manifest = synthesize_manifest(folder, peft, base, manifest_defaults)
    else:
        raise AdapterValidationError(
            f"missing {MANIFEST_FILE}; to register a plain PEFT folder, give the task and "
            "labels so that a manifest can be synthesized"
        )
    _check_files(folder, manifest, set(sizes) - {MANIFEST_FILE})
    _check_base(manifest, base)
    rank = peft.get("r")
    # Checked before the tensors are read: a huge rank means huge tensors.
    if isinstance(rank, int) and not isinstance(rank, bool):
        check_rank(CONFIG_FILE, rank, limits.max_rank)
        _check_declared_shapes(folder, base, rank)
    weights = read_lora_adapter(folder, name=folder.name)
    _check_lora(weights, base)
    _check_summary(manifest, weights, peft)
    _check_head(manifest, weights, base, limits)
    return manifest
