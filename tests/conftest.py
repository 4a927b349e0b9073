"""Shared fixtures: tiny random Llama models, a tiny tokenizer, random PEFT adapters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from adapters.demo import write_random_adapter

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of france? paris is the capital of france.",
    "low rank adapters change a few weights of a large language model",
    "name three primary colors: red, yellow and blue",
    "write a haiku about the sea and the wind and the waves",
] * 20


def build_tiny_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (~400 tokens) with ChatML specials, saved in ``folder``."""
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(
        CORPUS, vocab_size=400, min_frequency=2,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=trainer._tokenizer, bos_token="<|im_start|>",
        eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_llama(folder: Path, vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama with grouped-query attention, saved as safetensors."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a tiny random Llama base model and its tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-base")
    tokenizer = build_tiny_tokenizer(folder)
    build_tiny_llama(folder, vocab_size=len(tokenizer))
    return folder


AdapterFactory = Callable[..., Path]


@pytest.fixture
def make_adapter(tiny_base_dir: Path, tmp_path: Path) -> AdapterFactory:
    """Factory: ``make_adapter(name, rank=..., targets=..., seed=...)`` -> adapter folder."""

    def factory(name: str, *, rank: int = 4, targets: Sequence[str] = ("q_proj", "v_proj"),
                seed: int = 0, root: Path | None = None) -> Path:
        folder = (root or tmp_path / "adapters") / name
        return write_random_adapter(tiny_base_dir, folder, rank=rank, targets=targets, seed=seed)

    return factory
