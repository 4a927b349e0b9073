"""QLoRA: training over a 4-bit NF4 base (bitsandbytes CPU kernels)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file

from loraswap.adapters.package import read_manifest
from loraswap.training.config import TrainConfig
from loraswap.training.runner import run_training

ConfigFactory = Callable[..., TrainConfig]


def _bnb_4bit_works() -> bool:
    try:
        import bitsandbytes

        return hasattr(bitsandbytes.nn, "Linear4bit")
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _bnb_4bit_works(), reason="bitsandbytes 4-bit unavailable")


def test_qlora_trains_lora_factors_over_an_nf4_base(make_config: ConfigFactory,
                                                   csv_data: Path) -> None:
    outcome = run_training(make_config("seq-cls", csv_data, qlora=True, max_steps=3))
    manifest = read_manifest(outcome.output)
    assert manifest.training["base_weights"].startswith("nf4")
    assert manifest.training["config"]["qlora"] is True
    tensors = load_file(str(outcome.output / "adapter_model.safetensors"))
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    # PEFT starts B at zero: non-zero B means gradients flowed through the 4-bit layers.
    assert lora_b and all(float(t.abs().sum()) > 0 for t in lora_b)


def test_qlora_on_smollm2_moves_every_lora_b(csv_data: Path, tmp_path: Path,
                                             make_config: ConfigFactory,
                                             real_model_dir: Path) -> None:
    cfg = make_config("seq-cls", csv_data, qlora=True, max_steps=2, batch_size=4,
                      base_model=real_model_dir, output=tmp_path / "real")
    tensors = load_file(str(run_training(cfg).output / "adapter_model.safetensors"))
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    assert len(lora_b) == 30 * 7
    assert all(float(t.abs().sum()) > 0 for t in lora_b)
