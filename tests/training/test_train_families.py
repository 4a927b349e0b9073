"""``loraswap train`` on every served model family: the package trains, loads and serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraswap.adapters.package import read_manifest
from loraswap.training.runner import run_training
from tests.model_families import NEW_FAMILIES, build_tiny_base
from tests.service.engine.references import (
    assert_matches_peft,
    make_engine,
    results_of,
    submit_classify,
)
from tests.training.conftest import ConfigFactory

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("family", NEW_FAMILIES)
async def test_seq_cls_trains_and_serves_on_family(family: str, tmp_path: Path,
                                                   make_config: ConfigFactory,
                                                   csv_data: Path) -> None:
    base = build_tiny_base(tmp_path / f"tiny-{family}", family)
    cfg = make_config("seq-cls", csv_data, base_model=base, precision="fp32",
                      lora={"r": 4, "targets": ALL_TARGETS})
    outcome = run_training(cfg)
    folder = cfg.output
    manifest = read_manifest(folder)
    assert manifest.labels == ["neg", "pos"] and manifest.training["steps"] == 4
    tensors = load_file(folder / "adapter_model.safetensors")
    moved = [name for name, value in tensors.items()
             if "lora_B" in name and torch.count_nonzero(value) > 0]
    assert len(moved) == 2 * len(ALL_TARGETS), outcome  # every layer, every target trained
    engine = make_engine(base)
    pending = [await submit_classify(engine, "trained", folder, [5, 6, 7, 8], "c")]
    engine.start()
    try:
        (result,) = await results_of(pending)
    finally:
        engine.stop()
    assert_matches_peft(base, folder, [5, 6, 7, 8], result)
