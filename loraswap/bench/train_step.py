"""Time of one ``loraswap train`` optimizer step, per precision, on the real base model.

A seq-cls step (the task the precision complaint was measured on): a batch of
``batch_size`` random prompts of ``tokens`` tokens through the PEFT model that
``loraswap train`` builds, backward and AdamW, after one untimed warm-up step; the best of
``repeats`` steps is reported (the machine may be shared).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from loraswap.training.config import build_config
from loraswap.training.runner import load_base
from loraswap.training.tasks import build_task_model


@dataclass(frozen=True)
class TrainStepResult:
    """Best and median seconds of one optimizer step in one precision."""

    precision: str
    best_s: float
    median_s: float


def time_train_step(base_model: Path, precision: str, *, batch_size: int = 16,
                    tokens: int = 32, repeats: int = 3) -> TrainStepResult:
    """Seconds of a seq-cls training step with the base in ``precision`` (bf16 or fp32)."""
    cfg = build_config({}, {"task": "seq-cls", "data": base_model / "config.json",
                            "output": Path("/nonexistent"), "base_model": base_model,
                            "precision": precision}).resolved()
    loaded = load_base(cfg)
    task_model = build_task_model(cfg, loaded, ["negative", "positive"])
    model = task_model.model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, int(loaded.model.config.vocab_size), (batch_size, tokens),
                        generator=generator)
    labels = torch.randint(0, 2, (batch_size,), generator=generator)

    def step() -> float:
        started = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    step()
    times = sorted(step() for _ in range(repeats))
    return TrainStepResult(precision, times[0], times[len(times) // 2])
