"""Plain PEFT adapter folders written by PEFT itself, as users bring them.

Each folder is what ``get_peft_model(model, config).save_pretrained(folder)`` writes for
the tiny base model (``adapter_config.json`` + ``adapter_model.safetensors`` + PEFT's
``README.md``), with no ``loraswap.json``. PEFT starts ``lora_B`` at zero, which would make
every adapter equal the base, so the trainable weights are randomized first: each adapter
visibly changes the output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from tests.service.conftest import LiveServer

PROMPT = "the quick brown fox"
NEW_TOKENS = 8
PACKAGE_PART = ("adapter_config.json", "adapter_model.safetensors")
_MODEL_CLASS: dict[str, Any] = {
    "CAUSAL_LM": AutoModelForCausalLM,
    "SEQ_CLS": AutoModelForSequenceClassification,
    "TOKEN_CLS": AutoModelForTokenClassification,
}


def load_tiny(base_dir: Path, task_type: str, num_labels: int | None = None) -> PreTrainedModel:
    """The tiny base in fp32 with the head of ``task_type`` (random head for classifiers)."""
    extra: dict[str, Any] = {} if num_labels is None else {"num_labels": num_labels}
    model: PreTrainedModel = _MODEL_CLASS[task_type].from_pretrained(
        base_dir, dtype=torch.float32, **extra)
    return model.eval()


def _randomize(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if "lora_A" in name or "lora_B" in name or "score" in name:
                big = "lora_B" in name or "score" in name
                scale = 0.4 if big else 1.0 / param.shape[-1] ** 0.5
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
            else:  # DoRA magnitudes, IA3 vectors, LoHa/LoKr factors, prefixes, lm_head copies
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)


def save_peft_adapter(base_dir: Path, folder: Path, config: PeftConfig, *, seed: int = 0,
                      num_labels: int | None = None, keep_readme: bool = False) -> Path:
    """Wrap the tiny base with ``config``, randomize the trainable weights, save as PEFT does.

    PEFT's ``README.md`` (not a package file) is removed unless ``keep_readme``.
    """
    task_type = str(config.task_type.value if isinstance(config.task_type, TaskType)
                    else config.task_type or "CAUSAL_LM")
    torch.manual_seed(seed)
    model = get_peft_model(load_tiny(base_dir, task_type, num_labels), config)
    _randomize(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    if not keep_readme:
        (folder / "README.md").unlink(missing_ok=True)
    return folder


def lora_config(task_type: str = "CAUSAL_LM", *, rank: int = 4,
                targets: Sequence[str] = ("q_proj", "v_proj"), **options: Any) -> LoraConfig:
    """A ``LoraConfig`` like a trainer's: alpha 2r, no dropout at inference."""
    return LoraConfig(task_type=task_type, r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                      target_modules=list(targets), **options)


def edit_config(folder: Path, **changes: Any) -> Path:
    """Change fields of the folder's ``adapter_config.json`` (as other tools write them)."""
    path = folder / "adapter_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return folder


def upload_parts(folder: Path) -> list[tuple[str, tuple[str, bytes]]]:
    """Multipart ``files`` parts of the PEFT folder's adapter files (not PEFT's README)."""
    return [("files", (name, (folder / name).read_bytes())) for name in PACKAGE_PART]


def served_text(server: LiveServer, adapter: str | None) -> str:
    """Greedy raw-text completion of :data:`PROMPT` through ``/v1/predict`` (None: base)."""
    response = server.client.post("/v1/predict", json={
        "adapter": adapter, "inputs": PROMPT, "raw": True,
        "parameters": {"max_new_tokens": NEW_TOKENS, "ignore_eos": True}})
    assert response.status_code == 200, response.text
    text: str = response.json()["outputs"][0]["text"]
    return text


def peft_text(base_dir: Path, folder: Path) -> str:
    """The same greedy completion from PEFT in fp32 (the reference)."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(load_tiny(base_dir, "CAUSAL_LM"), folder).eval()
    model.generation_config.eos_token_id = None  # run the full length, like ignore_eos
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    text: str = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return text
