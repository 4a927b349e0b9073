"""Tiny random base models of every family the engine serves, built from transformers configs.

Each family keeps what distinguishes it from Llama (Qwen2's q/k/v biases and tied
embeddings, Qwen3's q/k head norms and explicit head_dim, Gemma's scaled embedding, GeLU and
``1 + weight`` norms), at the size of the tiny Llama in ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

from tests.conftest import build_tiny_tokenizer

_COMMON: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
    pad_token_id=2,
)

FAMILY_CONFIGS: dict[str, Callable[[int], PretrainedConfig]] = {
    "llama": lambda vocab: LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **_COMMON),
    "mistral": lambda vocab: MistralConfig(vocab_size=vocab, sliding_window=None,
                                           tie_word_embeddings=False, **_COMMON),
    "qwen2": lambda vocab: Qwen2Config(vocab_size=vocab, tie_word_embeddings=True,
                                       use_sliding_window=False, **_COMMON),
    "qwen3": lambda vocab: Qwen3Config(vocab_size=vocab, head_dim=24, tie_word_embeddings=False,
                                       **_COMMON),
    "gemma": lambda vocab: GemmaConfig(vocab_size=vocab, head_dim=16,
                                       hidden_act="gelu_pytorch_tanh", **_COMMON),
}
"""Config builder (given the vocabulary size) of each served family."""

NEW_FAMILIES = ("mistral", "qwen2", "qwen3", "gemma")
"""Families besides the tiny Llama that ``tiny_base_dir`` already covers everywhere."""


def build_tiny_base(folder: Path, family: str, seed: int = 0) -> Path:
    """Save a tiny random model of ``family`` and the tiny tokenizer in ``folder``."""
    tokenizer = build_tiny_tokenizer(folder)
    torch.manual_seed(seed)
    config = FAMILY_CONFIGS[family](len(tokenizer))
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random norms and biases, so a model that skips one is caught
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                param.add_(torch.randn_like(param) * 0.3)
    model.save_pretrained(folder)
    return folder
