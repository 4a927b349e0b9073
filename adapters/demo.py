"""Random LoRA adapters for trying the service and for tests and benchmarks.

They are real PEFT-format adapters (``adapter_config.json`` + safetensors, PEFT's tensor
names) whose B factors are random instead of zero, so each one visibly changes the base
model's output. They are written straight from the base model's ``config.json``, without
loading its weights. They are not trained: for useful adapters, use ``loraswap train``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from loraswap.adapters.lora_format import CONFIG_FILE, WEIGHTS_FILE
from loraswap.base_model.families import projection_shapes

DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def write_random_adapter(
    base_dir: Path, out_dir: Path, *, rank: int, targets: Sequence[str], seed: int,
    alpha: float | None = None, scale: float = 0.2,
) -> Path:
    """Save a LoRA adapter for the model in ``base_dir`` with random A and B.

    A is drawn like PEFT's default (uniform in ±1/sqrt(in)); B from normal(0, ``scale``):
    large enough that adapters visibly change the output (PEFT initialises B to zero),
    small enough on a real model to keep it fluent.
    """
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    shapes = projection_shapes(config)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(int(config["num_hidden_layers"])):
        for module in targets:
            parent = "mlp" if module in MLP_PROJECTIONS else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{parent}.{module}"
            in_features, out_features = shapes[module]
            bound = 1.0 / math.sqrt(in_features)
            lora_a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
            lora_b = torch.randn(out_features, rank, generator=generator) * scale
            tensors[f"{prefix}.lora_A.weight"] = lora_a.contiguous()
            tensors[f"{prefix}.lora_B.weight"] = lora_b.contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / WEIGHTS_FILE))
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank,
        "lora_alpha": alpha if alpha is not None else 2 * rank, "lora_dropout": 0.0,
        "bias": "none", "target_modules": list(targets), "use_rslora": False,
        "use_dora": False, "fan_in_fan_out": False, "inference_mode": True,
        "base_model_name_or_path": str(base_dir),
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
    return out_dir
