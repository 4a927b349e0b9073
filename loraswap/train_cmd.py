"""``loraswap train``: train a LoRA adapter package (mounted by ``loraswap.cli``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from loraswap.adapters.package import TaskKind
from loraswap.core.errors import LoraswapError

ADMIN_TOKEN_ENV = "LORASWAP_ADMIN_TOKEN"

Opt = typer.Option


def train(
    config: Annotated[Path | None, Opt("--config", help="YAML or JSON file of settings; "
                                       "flags given too override it.")] = None,
    task: Annotated[TaskKind | None, Opt(help="seq-cls, token-cls or causal-lm.")] = None,
    data: Annotated[Path | None, Opt(help="Training data (JSONL/JSON/CSV/TSV/CoNLL).")] = None,
    eval_data: Annotated[Path | None, Opt(help="Validation data (default: a seeded split "
                                          "of --data).")] = None,
    test_data: Annotated[Path | None, Opt(help="Test data, evaluated once at the end.")] = None,
    data_format: Annotated[str | None, Opt("--format", help="auto, jsonl, json, csv, tsv, "
                                           "conll (default: from the extension).")] = None,
    text_column: Annotated[str | None, Opt(help="Text column [text].")] = None,
    label_column: Annotated[str | None, Opt(help="Label column [label].")] = None,
    output: Annotated[Path | None, Opt(help="Folder to write the package into.")] = None,
    base_model: Annotated[Path | None, Opt(help="Base model folder.")] = None,
    precision: Annotated[str | None, Opt(help="auto (default: bf16 where the CPU has "
                                         "native bf16, else fp32), bf16 or fp32.")] = None,
    attention: Annotated[str | None, Opt(help="causal or bidirectional (seq-cls / token-cls; "
                                         "default: bidirectional for token-cls).")] = None,
    qlora: Annotated[bool | None, Opt("--qlora/--no-qlora", help="4-bit NF4 base "
                                      "(bitsandbytes).")] = None,
    epochs: Annotated[float | None, Opt(help="Epochs [3].")] = None,
    max_steps: Annotated[int | None, Opt(help="Optimizer steps (overrides epochs).")] = None,
    lr: Annotated[float | None, Opt("--lr", help="Peak learning rate [task default].")] = None,
    batch_size: Annotated[int | None, Opt(help="Micro-batch size.")] = None,
    grad_accum: Annotated[int | None, Opt(help="Gradient accumulation steps [1].")] = None,
    max_length: Annotated[int | None, Opt(help="Truncate inputs to this many tokens.")] = None,
    max_train_samples: Annotated[int | None, Opt(help="Seeded subsample of training "
                                                 "data.")] = None,
    max_eval_samples: Annotated[int | None, Opt(help="Seeded subsample of validation "
                                                "data.")] = None,
    val_fraction: Annotated[float | None, Opt(help="Held out when no --eval-data [0.1].")] = None,
    seed: Annotated[int | None, Opt(help="Random seed [42].")] = None,
    patience: Annotated[int | None, Opt(help="Early stop after N evaluations without "
                                        "gain.")] = None,
    eval_every: Annotated[int | None, Opt(help="Evaluate every N steps [each epoch].")] = None,
    lora_r: Annotated[int | None, Opt("--lora-r", help="LoRA rank [16].")] = None,
    lora_alpha: Annotated[float | None, Opt("--lora-alpha", help="LoRA alpha [32].")] = None,
    lora_dropout: Annotated[float | None, Opt("--lora-dropout", help="[0.05]")] = None,
    lora_targets: Annotated[str | None, Opt("--lora-targets", help="Comma-separated "
                                            "projections [all seven].")] = None,
    baseline: Annotated[bool | None, Opt("--baseline/--no-baseline", help="Also evaluate the "
                                         "untrained adapter (zero-shot).")] = None,
    resume: Annotated[bool | None, Opt("--resume/--no-resume", help="Continue from the last "
                                       "checkpoint.")] = None,
    checkpoint_dir: Annotated[Path | None, Opt(help="[OUTPUT.checkpoints]")] = None,
    tenant: Annotated[str | None, Opt(help="Tenant recorded in the manifest.")] = None,
    name: Annotated[str | None, Opt(help="Adapter name recorded in the manifest.")] = None,
    push: Annotated[str | None, Opt("--push", help="Service URL to upload the package "
                                    "to (needs --tenant and --name).")] = None,
    admin_token: Annotated[str | None, Opt(help=f"Admin token for --push "
                                           f"[{ADMIN_TOKEN_ENV}].")] = None,
    no_progress: Annotated[bool, Opt("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Train a LoRA adapter (seq-cls, token-cls or causal-lm) and write its package."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides: dict[str, Any] = {
        "task": task, "data": data, "eval_data": eval_data, "test_data": test_data,
        "data_format": data_format, "text_column": text_column, "label_column": label_column,
        "output": output, "base_model": base_model, "precision": precision, "qlora": qlora,
        "attention": attention,
        "epochs": epochs, "max_steps": max_steps, "learning_rate": lr,
        "batch_size": batch_size, "grad_accum": grad_accum, "max_length": max_length,
        "max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples,
        "val_fraction": val_fraction, "seed": seed, "patience": patience,
        "eval_every": eval_every, "baseline": baseline, "resume": resume,
        "checkpoint_dir": checkpoint_dir, "tenant": tenant, "name": name,
        "progress": False if no_progress else None,
        "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
        "lora_targets": None if lora_targets is None else [
            t.strip() for t in lora_targets.split(",") if t.strip()],
    }
    token = admin_token or os.environ.get(ADMIN_TOKEN_ENV)
    try:
        from loraswap.training.config import build_config, read_config_file
        from loraswap.training.runner import run_training

        file_values = read_config_file(config) if config is not None else {}
        cfg = build_config(file_values, overrides)
        if push is not None and not (cfg.tenant and cfg.name and token):
            raise_usage("--push needs --tenant, --name and an admin token "
                        f"(--admin-token or {ADMIN_TOKEN_ENV})")
        outcome = run_training(cfg)
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in outcome.manifest.metrics.items())
        typer.echo(f"wrote {outcome.output} in {outcome.seconds:.0f}s ({metrics})")
        if push is not None:
            from loraswap.adapters.push import PushTarget, push_package

            assert cfg.tenant and cfg.name and token
            # A copy of the training data goes to the store first, recorded in the
            # manifest, so retraining (docs/drift.md) finds what this version learnt from.
            from loraswap.jobs.training_data import upload_via_service
            from loraswap.training.retrain import record_data_store

            data_files = {"train": cfg.data, **({"test": cfg.test_data} if cfg.test_data
                                                else {})}
            keys = upload_via_service(push, token, cfg.tenant, cfg.name, data_files)
            # How to read them (format, columns) is in the training config already.
            record_data_store(outcome.output, keys)
            typer.echo(f"training data copied to the store: {', '.join(keys.values())}")
            reply = push_package(outcome.output, PushTarget(
                server=push, admin_token=token, tenant=cfg.tenant, name=cfg.name))
            typer.echo(f"pushed to {push}: {cfg.tenant}/{cfg.name} version {reply['version']}")
    except LoraswapError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(code=1) from None


def raise_usage(message: str) -> None:
    """Stop with a configuration error naming what is missing."""
    from loraswap.core.errors import ConfigurationError

    raise ConfigurationError(message)
