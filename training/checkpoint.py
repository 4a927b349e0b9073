"""Resumable checkpoints without pickle: safetensors for tensors, JSON for the rest.

A checkpoint folder holds ``state.safetensors`` (trainable weights, AdamW moments, the torch
RNG state as a uint8 tensor), ``best.safetensors`` (the best weights so far) and
``state.json`` (step, epoch, best metric, patience, seed, configuration fingerprint). It is
written into a temporary folder and renamed, so an interrupted save leaves the previous one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from loraswap.core.errors import ConfigurationError

STATE_TENSORS = "state.safetensors"
BEST_TENSORS = "best.safetensors"
STATE_JSON = "state.json"
_RNG_KEY = "__rng_state__"


@dataclass
class TrainState:
    """Progress of a run (JSON part of a checkpoint)."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int = 0
    evals_without_gain: int = 0
    seed: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into the trainable parameters (names must match exactly)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        raise ConfigurationError("checkpoint weights do not match the model being trained")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


def _optimizer_tensors(optimizer: torch.optim.Optimizer,
                       names: dict[int, str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for param, state in optimizer.state.items():
        name = names[id(param)]
        for key, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(float(value))
            out[f"optim/{name}/{key}"] = tensor.detach().clone().contiguous()
    return out


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainState, best: dict[str, torch.Tensor] | None) -> None:
    """Atomically replace the checkpoint in ``folder``."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    tensors = {f"model/{k}": v.contiguous() for k, v in trainable_state(model).items()}
    tensors.update(_optimizer_tensors(optimizer, names))
    tensors[_RNG_KEY] = torch.get_rng_state()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / STATE_TENSORS))
    if best is not None:
        save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / BEST_TENSORS))
    (tmp / STATE_JSON).write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def has_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a complete checkpoint."""
    return (folder / STATE_JSON).is_file() and (folder / STATE_TENSORS).is_file()


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    fingerprint: dict[str, Any]) -> tuple[TrainState, dict[str, torch.Tensor]
                                                          | None]:
    """Restore weights, optimizer moments and RNG; returns the state and best weights."""
    state = TrainState(**json.loads((folder / STATE_JSON).read_text(encoding="utf-8")))
    if state.fingerprint != fingerprint:
        changed = sorted(k for k in set(state.fingerprint) | set(fingerprint)
                         if state.fingerprint.get(k) != fingerprint.get(k))
        raise ConfigurationError(
            f"checkpoint in {folder} was made with different settings ({', '.join(changed)}); "
            "resume with the same configuration or delete the checkpoint folder"
        )
    tensors = load_file(str(folder / STATE_TENSORS))
    load_trainable(model, {k.removeprefix("model/"): v for k, v in tensors.items()
                           if k.startswith("model/")})
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for key, value in tensors.items():
        if not key.startswith("optim/"):
            continue
        name, slot = key.removeprefix("optim/").rsplit("/", 1)
        optimizer.state[params[name]][slot] = value.clone()
    torch.set_rng_state(tensors[_RNG_KEY])
    best_path = folder / BEST_TENSORS
    best = load_file(str(best_path)) if best_path.is_file() else None
    return state, best
