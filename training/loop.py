"""The training loop: AdamW, linear warmup/decay, gradient accumulation, early stopping.

Written by hand (not ``transformers.Trainer``) so that checkpoints are safetensors + JSON
(see :mod:`loraswap.training.checkpoint`) and resuming is exact: batch order is a pure function of
(seed, epoch), and the RNG state that drives dropout is saved with each checkpoint.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from loraswap.adapters.package import TaskKind
from loraswap.training.checkpoint import (
    TrainState,
    has_checkpoint,
    load_checkpoint,
    load_trainable,
    save_checkpoint,
    trainable_state,
)
from loraswap.training.config import TrainConfig
from loraswap.training.evaluate import evaluate, forward_logits, task_loss
from loraswap.training.metrics import SELECTION_METRIC, is_better
from loraswap.training.tasks import Encoded, TaskModel, collate

logger = logging.getLogger(__name__)

StepCallback = Callable[[int], None]


@dataclass
class LoopResult:
    """How the run went: steps taken, best validation metrics, why it stopped."""

    steps: int
    epochs: float
    best_metrics: dict[str, float]
    stopped_early: bool
    history: list[dict[str, float]]


def epoch_batches(items: Sequence[Encoded], batch_size: int, seed: int,
                  epoch: int) -> list[list[int]]:
    """Index batches for one epoch: shuffled, length-grouped within windows of 50 batches."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(items)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        part = sorted(order[start:start + window], key=lambda i: len(items[i].input_ids))
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def _schedule(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def plan_steps(cfg: TrainConfig, n_train: int) -> tuple[int, int]:
    """(optimizer steps in total, optimizer steps per epoch)."""
    micro = math.ceil(n_train / cfg.batch)
    per_epoch = max(1, micro // cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(per_epoch * cfg.epochs))
    return total, per_epoch


def train_loop(cfg: TrainConfig, task_model: TaskModel, train: Sequence[Encoded],
               val: Sequence[Encoded], labels: list[str] | None, pad_id: int,
               on_step: StepCallback | None = None) -> LoopResult:
    """Train ``task_model`` in place; ends holding the best validation weights (the final
    ones when ``cfg.keep_best`` is off)."""
    model = task_model.model
    task: TaskKind = cfg.task
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total, per_epoch = plan_steps(cfg, len(train))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(total, math.ceil(total * cfg.warmup_ratio)))
    eval_every = cfg.eval_every or per_epoch
    assert cfg.checkpoint_dir is not None
    state = TrainState(seed=cfg.seed, fingerprint=cfg.fingerprint())
    best: dict[str, torch.Tensor] | None = None
    if cfg.resume and has_checkpoint(cfg.checkpoint_dir):
        state, best = load_checkpoint(cfg.checkpoint_dir, model, optimizer, cfg.fingerprint())
        for group in optimizer.param_groups:
            group["initial_lr"] = cfg.lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _schedule(total, math.ceil(total * cfg.warmup_ratio)),
            last_epoch=state.step - 1)
        logger.info("resumed from %s at step %d", cfg.checkpoint_dir, state.step)
    elif cfg.resume:
        logger.warning("--resume: no checkpoint in %s, starting from scratch",
                       cfg.checkpoint_dir)

    bar = _progress(cfg, total, state.step)
    stopped_early = False
    model.train()
    while state.step < total and not stopped_early:
        batches = epoch_batches(train, cfg.batch, cfg.seed, state.epoch)
        usable = len(batches) - len(batches) % cfg.grad_accum or len(batches)
        for start in range(state.step_in_epoch * cfg.grad_accum, usable, cfg.grad_accum):
            loss = _optimizer_step(task, task_model, optimizer, train,
                                   batches[start:start + cfg.grad_accum], pad_id)
            scheduler.step()
            state.step += 1
            state.step_in_epoch += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", epoch=state.epoch)
            elif state.step % 50 == 0:
                logger.info("step %d/%d: loss %.4f, lr %.2e", state.step, total, loss,
                            scheduler.get_last_lr()[0])
            last_of_epoch = start + cfg.grad_accum >= usable
            if state.step % eval_every == 0 or state.step == total or last_of_epoch:
                stopped_early, improved = _evaluate_and_track(
                    cfg, task_model, val, labels, pad_id, state)
                best = improved if improved is not None else best
                if last_of_epoch:
                    state.epoch += 1
                    state.step_in_epoch = 0
                save_checkpoint(cfg.checkpoint_dir, model, optimizer, state, best)
            if on_step is not None:
                on_step(state.step)
            if state.step >= total or stopped_early:
                break
    if bar is not None:
        bar.close()
    if best is not None and cfg.keep_best:
        load_trainable(model, best)
    best_metrics = _best_entry(task, state)
    return LoopResult(state.step, state.step / per_epoch, best_metrics, stopped_early,
                      state.history)


def _optimizer_step(task: TaskKind, task_model: TaskModel, optimizer: torch.optim.Optimizer,
                    train: Sequence[Encoded], group: list[list[int]], pad_id: int) -> float:
    """Forward/backward over ``group`` micro-batches, then one optimizer step."""
    total_loss = 0.0
    for indices in group:
        batch = collate([train[i] for i in indices], pad_id)
        loss = task_loss(task, forward_logits(task_model, batch), batch["labels"])
        (loss / len(group)).backward()  # type: ignore[no-untyped-call]
        total_loss += float(loss.detach()) / len(group)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss


def _evaluate_and_track(cfg: TrainConfig, task_model: TaskModel, val: Sequence[Encoded],
                        labels: list[str] | None, pad_id: int, state: TrainState,
                        ) -> tuple[bool, dict[str, torch.Tensor] | None]:
    """Evaluate; (patience ran out, the new best weights if this evaluation is best)."""
    result = evaluate(task_model, cfg.task, val, labels, cfg.batch, pad_id)
    entry = {"step": float(state.step), **result.metrics}
    state.history.append(entry)
    name, _ = SELECTION_METRIC[cfg.task]
    logger.info("step %d: %s", state.step,
                ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))
    if is_better(cfg.task, result.metrics, state.best_metric):
        state.best_metric = result.metrics[name]
        state.best_step = state.step
        state.evals_without_gain = 0
        return False, trainable_state(task_model.model)
    state.evals_without_gain += 1
    if cfg.patience is not None and state.evals_without_gain >= cfg.patience:
        logger.info("early stop: %s did not improve for %d evaluation(s) (best %.4f at step %d)",
                    name, cfg.patience, state.best_metric or 0.0, state.best_step)
        return True, None
    return False, None


def _best_entry(task: TaskKind, state: TrainState) -> dict[str, float]:
    for entry in state.history:
        if int(entry["step"]) == state.best_step:
            return {k: v for k, v in entry.items() if k != "step"}
    return {}


def _progress(cfg: TrainConfig, total: int, done: int) -> Any:
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"train {cfg.task}", unit="step",
                mininterval=5.0, dynamic_ncols=True)
