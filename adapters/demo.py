"""Random LoRA adapters for trying the service and for tests and benchmarks.

They are real PEFT adapters (safetensors) whose B factors are random instead of zero, so
each one visibly changes the base model's output. They are not trained: for useful
adapters, use ``loraswap train``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def write_random_adapter(
    base_dir: Path, out_dir: Path, *, rank: int, targets: Sequence[str], seed: int,
    alpha: float | None = None, scale: float = 0.2,
) -> Path:
    """Save a PEFT LoRA adapter for the model in ``base_dir`` with random A and B.

    ``scale`` is the standard deviation of B: large enough that adapters visibly change the
    output (PEFT initialises B to zero), small enough on a real model to keep it fluent.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, local_files_only=True, use_safetensors=True,
        trust_remote_code=False,
    )
    config = LoraConfig(
        r=rank, lora_alpha=alpha if alpha is not None else 2 * rank,
        target_modules=list(targets), init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
