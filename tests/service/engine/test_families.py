"""Every served model family: the engine's logits, greedy tokens and classifier
probabilities equal transformers + PEFT in fp32, for a mixed batch with adapters on every
target module."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import Phi3Config, Phi3ForCausalLM

from loraswap.adapters.demo import write_random_adapter
from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.core.errors import ModelLoadError
from loraswap.service.engine.engine import EngineConfig, LoraEngine
from loraswap.service.engine.observer import NullObserver
from tests.conftest import write_classifier_adapter
from tests.model_families import FAMILY_CONFIGS, build_tiny_base
from tests.service.engine.references import (
    assert_matches_peft,
    engine_greedy,
    make_engine,
    peft_greedy,
    peft_last_logits,
    results_of,
    submit_classify,
)
from tests.utils.engine import prefill_logits

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTERS = {  # name: (rank, targets, seed)
    "all-r8": (8, ALL_TARGETS, 1),
    "qkv-r4": (4, ("q_proj", "k_proj", "v_proj"), 2),
    "mlp-r16": (16, ("gate_proj", "up_proj", "down_proj"), 3),
}
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [40, 41, 42, 43, 44, 45, 46, 47], [70, 71]]
NAMES: list[str | None] = ["all-r8", "qkv-r4", None, "mlp-r16"]  # one row on the base
NEW_TOKENS = 8

every_family = pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base of every family and its adapters, built once per module."""
    return {}


@pytest.fixture
def base_dir(family: str, family_dirs: dict[str, Path],
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    if family not in family_dirs:
        folder = build_tiny_base(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        for name, (rank, targets, seed) in ADAPTERS.items():
            write_random_adapter(folder, folder / "adapters" / name, rank=rank,
                                 targets=targets, seed=seed)
        family_dirs[family] = folder
    return family_dirs[family]


def adapter(base_dir: Path, name: str | None) -> Path | None:
    return base_dir / "adapters" / name if name else None


@every_family
def test_mixed_batch_logits_match_peft(base_dir: Path) -> None:
    """One prefill of four prompts, three adapters and the base mixed: each row's logits
    equal PEFT's for that adapter alone."""
    engine = make_engine(base_dir)
    for slot, name in enumerate(ADAPTERS, start=1):
        engine.table.load(slot, read_lora_adapter(base_dir / "adapters" / name))
    slot_of = {name: slot for slot, name in enumerate(ADAPTERS, start=1)}
    slots = [slot_of[name] if name else 0 for name in NAMES]
    logits = prefill_logits(engine, PROMPTS, slots)
    for row, (name, prompt) in enumerate(zip(NAMES, PROMPTS, strict=True)):
        expected = peft_last_logits(base_dir, adapter(base_dir, name), prompt)
        torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)
        if name is not None:  # the adapter matters far beyond the tolerance
            base = peft_last_logits(base_dir, None, prompt)
            assert (expected - base).abs().max() > 1e-2


@every_family
async def test_mixed_batch_greedy_tokens_match_peft(base_dir: Path) -> None:
    engine = make_engine(base_dir)
    engine.start()
    try:
        got = await asyncio.gather(*(
            engine_greedy(engine, name, adapter(base_dir, name), prompt, NEW_TOKENS, f"r{i}")
            for i, (name, prompt) in enumerate(zip(NAMES, PROMPTS, strict=True))))
    finally:
        engine.stop()
    for name, prompt, tokens in zip(NAMES, PROMPTS, got, strict=True):
        assert tokens == peft_greedy(base_dir, adapter(base_dir, name), prompt, NEW_TOKENS)


@every_family
async def test_classifiers_match_peft(base_dir: Path, tmp_path: Path) -> None:
    """A seq-cls and a bidirectional token-cls adapter on every target, in one batch."""
    folders = {
        "sentiment": write_classifier_adapter(
            base_dir, tmp_path / "sentiment", task="seq-cls", labels=["neg", "pos"], seed=4,
            rank=8, targets=ALL_TARGETS),
        "ner": write_classifier_adapter(
            base_dir, tmp_path / "ner", task="token-cls", labels=["O", "B-X", "I-X"], seed=5,
            targets=ALL_TARGETS, attention="bidirectional"),
    }
    engine = make_engine(base_dir)
    jobs = [(name, prompt) for name in folders for prompt in PROMPTS[:3]]
    pending = [await submit_classify(engine, name, folders[name], prompt, f"c{i}")
               for i, (name, prompt) in enumerate(jobs)]
    engine.start()
    try:
        results = await results_of(pending)
    finally:
        engine.stop()
    for (name, prompt), result in zip(jobs, results, strict=True):
        assert_matches_peft(base_dir, folders[name], prompt, result)


def test_unsupported_family_is_refused_naming_it() -> None:
    config = Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, vocab_size=64, pad_token_id=0)
    with pytest.raises(ModelLoadError, match="unsupported model_type 'phi3'"):
        LoraEngine(Phi3ForCausalLM(config), None, EngineConfig(), NullObserver())  # type: ignore[arg-type]
