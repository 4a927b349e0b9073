"""Resuming from a checkpoint reaches the same weights as an uninterrupted run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraswap.core.errors import ConfigurationError
from loraswap.training.checkpoint import STATE_JSON
from loraswap.training.config import TrainConfig
from loraswap.training.runner import run_training

ConfigFactory = Callable[..., TrainConfig]


class SimulatedKillError(Exception):
    """Stands in for a killed process."""


def _stop_after(step: int) -> Callable[[int], None]:
    def callback(current: int) -> None:
        if current == step:
            raise SimulatedKillError
    return callback


def test_resume_matches_an_uninterrupted_run(make_config: ConfigFactory, csv_data: Path,
                                             tmp_path: Path) -> None:
    # Dropout on and two epochs: the RNG state and the mid-epoch position must both resume.
    settings = {"max_steps": 8, "eval_every": 2, "batch_size": 8, "lora_dropout": 0.1}
    straight = run_training(make_config("seq-cls", csv_data, output=tmp_path / "straight",
                                        **settings))

    resumed_cfg = make_config("seq-cls", csv_data, output=tmp_path / "resumed", **settings)
    with pytest.raises(SimulatedKillError):
        run_training(resumed_cfg, on_step=_stop_after(7))
    state = json.loads((tmp_path / "resumed.checkpoints" / STATE_JSON).read_text())
    assert state["step"] == 6  # last checkpoint before the interruption, mid-epoch 2
    # 4 batches an epoch (the held-out slice for the drift reference is set aside first).
    assert state["epoch"] == 1 and state["step_in_epoch"] == 2
    resumed = run_training(resumed_cfg.model_copy(update={"resume": True}))

    a = load_file(str(straight.output / "adapter_model.safetensors"))
    b = load_file(str(resumed.output / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert resumed.manifest.training["steps"] == 8


def test_resume_with_other_settings_is_refused(make_config: ConfigFactory, csv_data: Path,
                                               tmp_path: Path) -> None:
    cfg = make_config("seq-cls", csv_data, output=tmp_path / "run", eval_every=2)
    with pytest.raises(SimulatedKillError):
        run_training(cfg, on_step=_stop_after(3))
    changed = cfg.model_copy(update={"resume": True, "learning_rate": 1e-4})
    with pytest.raises(ConfigurationError, match="learning_rate"):
        run_training(changed)
