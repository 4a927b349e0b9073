"""Reading PEFT LoRA adapters (``adapter_config.json`` + ``adapter_model.safetensors``).

Only the safetensors format is ever opened: a pickle-based ``adapter_model.bin`` is refused
before anything is read, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from loraswap.adapters.peft_config import HEAD_TASK_TYPES, check_peft_options
from loraswap.core.errors import AdapterIncompatibleError, AdapterValidationError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILES = ("adapter_model.bin", "pytorch_model.bin")

# Projections of a Llama decoder layer that a LoRA adapter may target.
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# The classification head a seq-cls / token-cls adapter carries (PEFT ``modules_to_save``).
_HEAD_KEY = re.compile(r"(?:^|\.)score(?:\.modules_to_save\.default)?\.(?P<part>weight|bias)$")

_TENSOR_KEY = re.compile(
    r"(?:^|\.)layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\.(?P<module>\w+)"
    r"\.lora_(?P<which>[AB])(?:\.default)?\.weight$"
)


@dataclass(frozen=True)
class LoraConfigSummary:
    """The parts of a PEFT ``LoraConfig`` that decide how the adapter is applied."""

    r: int
    lora_alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]
    task_type: str | None
    base_model_name_or_path: str | None

    @property
    def scaling(self) -> float:
        """PEFT's multiplier of ``B @ A``: alpha/r, or alpha/sqrt(r) with rsLoRA."""
        if self.use_rslora:
            return self.lora_alpha / math.sqrt(self.r)
        return self.lora_alpha / self.r


@dataclass(frozen=True)
class ClassificationHead:
    """A task head: ``weight`` [num_labels, hidden] and, for token-cls, ``bias``."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    @property
    def num_labels(self) -> int:
        """Number of output classes."""
        return int(self.weight.shape[0])


@dataclass
class LoraAdapterWeights:
    """A decoded adapter: per (layer, projection) the ``A`` [r, in] and ``B`` [out, r] factors.

    ``scaling`` is kept separate so that tables can fold it in once, at load time.
    """

    name: str
    config: LoraConfigSummary
    factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    head: ClassificationHead | None = field(default=None, repr=False)

    @property
    def rank(self) -> int:
        """Largest rank over all targeted projections."""
        return max((a.shape[0] for a, _ in self.factors.values()), default=0)

    @property
    def targets(self) -> frozenset[str]:
        """Projection names that this adapter changes."""
        return frozenset(module for _, module in self.factors)

    @property
    def num_bytes(self) -> int:
        """Host memory held by the factors."""
        head = 0
        if self.head is not None:
            head = self.head.weight.numel() * self.head.weight.element_size()
            if self.head.bias is not None:
                head += self.head.bias.numel() * self.head.bias.element_size()
        return head + sum(a.numel() * a.element_size() + b.numel() * b.element_size()
                          for a, b in self.factors.values())


def check_config_types(raw: dict[str, Any], where: str) -> None:
    """Refuse ``target_modules`` and ``lora_dropout`` of the wrong JSON type, naming them.

    PEFT writes ``target_modules`` as a list of names (or one name) and ``lora_dropout`` as
    a number in [0, 1); anything else would otherwise fail deep inside the checks.
    """
    targets = raw.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise AdapterValidationError(
            f"{where}: target_modules must be a list of projection names, got "
            f"{type(targets).__name__} {str(targets)[:80]}"
        )
    dropout = raw.get("lora_dropout")
    if dropout is not None and (
            not isinstance(dropout, int | float) or isinstance(dropout, bool)
            or not 0.0 <= dropout < 1.0):
        raise AdapterValidationError(
            f"{where}: lora_dropout must be a number from 0 up to 1, got {str(dropout)[:80]}"
        )


def _read_config(folder: Path) -> LoraConfigSummary:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterValidationError(f"{folder.name}: missing {CONFIG_FILE}")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterValidationError(
            f"{folder.name}: {CONFIG_FILE} is not valid JSON: {exc}"
        ) from exc
    if not isinstance(raw, dict):
        raise AdapterValidationError(f"{folder.name}: {CONFIG_FILE} must hold a JSON object")
    check_config_types(raw, f"{folder.name}: {CONFIG_FILE}")
    try:
        check_peft_options(raw)
    except AdapterIncompatibleError as exc:
        raise AdapterIncompatibleError(f"{folder.name}: {exc}") from exc
    r, alpha = raw.get("r"), raw.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise AdapterValidationError(f"{folder.name}: r must be a positive integer, got {r!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise AdapterValidationError(f"{folder.name}: lora_alpha must be positive, got {alpha!r}")
    targets = raw.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    return LoraConfigSummary(
        r=r,
        lora_alpha=float(alpha),
        use_rslora=bool(raw.get("use_rslora", False)),
        target_modules=tuple(sorted(str(t) for t in targets)),
        task_type=raw.get("task_type"),
        base_model_name_or_path=raw.get("base_model_name_or_path"),
    )


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    for pickle_name in PICKLE_FILES:
        if (folder / pickle_name).exists():
            raise AdapterValidationError(
                f"{folder.name}: {pickle_name} is a pickle file and is never loaded; "
                f"save the adapter with safetensors ({WEIGHTS_FILE})"
            )
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise AdapterValidationError(f"{folder.name}: missing {WEIGHTS_FILE}")
    try:
        return load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterValidationError(f"{folder.name}: {WEIGHTS_FILE} is unreadable: {exc}") from exc


def _split_head(
    name: str, tensors: dict[str, torch.Tensor], config: LoraConfigSummary
) -> tuple[dict[str, torch.Tensor], ClassificationHead | None]:
    """Separate the ``score`` head tensors from the LoRA factors and check them."""
    parts: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        match = _HEAD_KEY.search(key)
        if match is None:
            rest[key] = tensor
        else:
            parts[match["part"]] = tensor
    wants_head = config.task_type in HEAD_TASK_TYPES
    if parts and not wants_head:
        raise AdapterIncompatibleError(
            f"{name}: tensor 'score' is a classification head, but task_type is "
            f"{config.task_type!r} (expected one of {', '.join(HEAD_TASK_TYPES)})"
        )
    if not wants_head:
        return rest, None
    weight = parts.get("weight")
    if weight is None:
        raise AdapterValidationError(
            f"{name}: task_type {config.task_type} needs a classification head "
            "(score.weight via modules_to_save), and the weights file has none"
        )
    bias = parts.get("bias")
    if weight.ndim != 2 or (bias is not None and tuple(bias.shape) != (weight.shape[0],)):
        raise AdapterValidationError(
            f"{name}: classification head has shape {tuple(weight.shape)}"
            f"{'' if bias is None else f' / bias {tuple(bias.shape)}'}, expected "
            "[num_labels, hidden] and [num_labels]"
        )
    for part in (weight, bias):
        if part is not None and not torch.isfinite(part).all():
            raise AdapterValidationError(f"{name}: classification head contains NaN or Inf")
    return rest, ClassificationHead(
        weight=weight.float(), bias=None if bias is None else bias.float()
    )


def _pair_factors(
    name: str, tensors: dict[str, torch.Tensor], config: LoraConfigSummary
) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _TENSOR_KEY.search(key)
        if match is None:
            if "lora_" in key or "modules_to_save" in key:
                raise AdapterIncompatibleError(f"{name}: unsupported tensor {key!r}")
            raise AdapterValidationError(f"{name}: unexpected tensor {key!r}")
        module = match["module"]
        if module not in LLAMA_PROJECTIONS:
            raise AdapterIncompatibleError(f"{name}: target {module!r} is not a Llama projection")
        if tensor.ndim != 2:
            raise AdapterValidationError(f"{name}: {key} has shape {tuple(tensor.shape)}, not 2-D")
        if not torch.isfinite(tensor).all():
            raise AdapterValidationError(f"{name}: {key} contains NaN or Inf")
        halves.setdefault((int(match["layer"]), module), {})[match["which"]] = tensor
    factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for (layer, module), pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            raise AdapterValidationError(f"{name}: layer {layer} {module} lacks lora_A or lora_B")
        lora_a, lora_b = pair["A"], pair["B"]
        if lora_a.shape[0] != config.r or lora_b.shape[1] != config.r:
            raise AdapterValidationError(
                f"{name}: layer {layer} {module} has rank {lora_a.shape[0]}/{lora_b.shape[1]}, "
                f"config says r={config.r}"
            )
        factors[(layer, module)] = (lora_a.float(), lora_b.float())
    if not factors:
        raise AdapterValidationError(f"{name}: {WEIGHTS_FILE} holds no LoRA tensors")
    return factors


def declared_factor_shapes(folder: Path) -> dict[tuple[int, str, str], tuple[int, ...]]:
    """Shapes of the LoRA factors as the safetensors header declares them, keyed by
    ``(layer, module, "A" | "B")``; no tensor data is read. Empty when the file cannot be
    opened (reading it later reports why)."""
    shapes: dict[tuple[int, str, str], tuple[int, ...]] = {}
    try:
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                match = _TENSOR_KEY.search(key)
                if match is not None:
                    shape = tuple(handle.get_slice(key).get_shape())
                    shapes[(int(match["layer"]), match["module"], match["which"])] = shape
    except (SafetensorError, OSError, ValueError):
        return {}
    return shapes


def read_lora_adapter(folder: Path, name: str | None = None) -> LoraAdapterWeights:
    """Read and check a PEFT LoRA adapter folder; factors come back as float32 on CPU."""
    adapter_name = name or folder.name
    if not folder.is_dir():
        raise AdapterValidationError(f"{adapter_name}: {folder} is not a folder")
    config = _read_config(folder)
    tensors, head = _split_head(adapter_name, _read_tensors(folder), config)
    return LoraAdapterWeights(
        name=adapter_name, config=config, factors=_pair_factors(adapter_name, tensors, config),
        head=head,
    )
