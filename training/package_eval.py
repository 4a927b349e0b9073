"""Evaluate a stored adapter package on a data file, the way it was trained to answer.

Retraining evaluates the candidate and the active version through this one function, on
the same held-out file, so neither side gets a different code path: a fresh base model,
the package's LoRA settings and attention, its weights loaded into PEFT, then
:func:`loraswap.training.evaluate.evaluate`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraswap.adapters.lora_format import WEIGHTS_FILE
from loraswap.adapters.package import MANIFEST_FILE, TaskKind
from loraswap.base_model.loading import Quantization, load_base_model
from loraswap.training.config import LoraSettings, TrainConfig
from loraswap.training.data import load_examples
from loraswap.training.evaluate import evaluate
from loraswap.training.tasks import build_task_model, encode_all


def evaluate_package(folder: Path, data: Path, base_model: Path, batch_size: int = 16,
                     quantization: Quantization = Quantization.BF16) -> dict[str, float]:
    """Metrics of the package in ``folder`` on ``data``: JSONL with the task's default
    columns (``text``/``label``, ``tokens``/``tags``, or chat/instruction records)."""
    from peft import set_peft_model_state_dict

    manifest = json.loads((folder / MANIFEST_FILE).read_text("utf-8"))
    task = TaskKind(manifest["task"])
    labels: list[str] | None = manifest.get("labels")
    lora = manifest["lora"]
    cfg = TrainConfig(
        task=task, data=data, output=folder, base_model=base_model, labels=labels,
        attention=manifest.get("attention"), progress=False,
        max_length=(manifest.get("training") or {}).get("config", {}).get("max_length"),
        lora=LoraSettings(r=lora["r"], alpha=lora["alpha"], targets=lora["targets"],
                          dropout=0.0),
    ).resolved()
    loaded = load_base_model(base_model, quantization, "cpu")
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id)
    tokenizer.padding_side = "right"
    task_model = build_task_model(cfg, loaded, labels)
    set_peft_model_state_dict(task_model.model, load_file(str(folder / WEIGHTS_FILE)))
    examples = load_examples(data, task, "jsonl")
    encoded = encode_all(task, tokenizer, examples, labels, cfg.length)
    with torch.no_grad():
        result = evaluate(task_model, task, encoded, labels, batch_size, pad_id)
    return {k: round(float(v), 6) for k, v in result.metrics.items()} | {
        "examples": float(len(encoded))}
