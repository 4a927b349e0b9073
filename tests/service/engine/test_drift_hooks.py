"""The engine's drift hooks of generations: each generated token's log-probability and the
prompt's pooled hidden state, checked against transformers + PEFT in fp32 on the tiny
model, and the same figures from the training profile's reference generations."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.engine import LoraEngine
from loraswap.service.engine.requests import GenerationEvent, GenerationRequest
from loraswap.service.engine.sampling import SamplingParams, chosen_logprobs
from loraswap.training.profile_generation import generate
from loraswap.training.tasks import TaskModel
from tests.conftest import AdapterFactory
from tests.service.engine.references import causal_lm
from tests.utils.engine import make_engine

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [40, 41, 42, 43, 44, 45, 46, 47, 48]]
NEW_TOKENS = 8


async def run(engine: LoraEngine, folder: Path | None, prompt: list[int], rid: str,
              params: SamplingParams) -> GenerationEvent:
    key = weights = None
    if folder is not None:
        key = AdapterVersionRef.parse("writer@1")
        weights = await engine.adapter_weights(key, lambda: read_lora_adapter(folder))
    request = GenerationRequest(request_id=rid, prompt_ids=prompt, params=params, adapter=key,
                                adapter_weights=weights)
    return await engine.submit(request).collect()


def transformers_logprobs(model: torch.nn.Module, prompt: list[int],
                          generated: list[int]) -> list[float]:
    """log_softmax of transformers' logits at each generated token (temperature 1)."""
    ids = torch.tensor([prompt + generated])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    steps = logits[len(prompt) - 1: len(prompt) - 1 + len(generated)].log_softmax(-1)
    return steps.gather(1, torch.tensor(generated)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("params", [
    SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True),
    # Sampled with another temperature and top_p: the figure is still the model's own
    # distribution at temperature 1, not the distribution the token was drawn from.
    SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True, temperature=0.7, top_p=0.9,
                   seed=3),
], ids=["greedy", "sampled"])
async def test_token_logprobs_equal_transformers_log_softmax(
        wide_logits_base_dir: Path, make_adapter: AdapterFactory,
        params: SamplingParams) -> None:
    folder = make_adapter("writer", rank=8, seed=5)
    engine = make_engine(wide_logits_base_dir)
    engine.start()
    try:  # all three in one batch: each row's figure is its own
        results = await asyncio.gather(*(run(engine, folder, p, f"r{i}", params)
                                         for i, p in enumerate(PROMPTS)))
    finally:
        engine.stop()
    model = causal_lm(wide_logits_base_dir, folder)
    for prompt, result in zip(PROMPTS, results, strict=True):
        expected = transformers_logprobs(model, prompt, list(result.token_ids))
        assert len(result.token_logprobs) == result.completion_tokens == NEW_TOKENS
        torch.testing.assert_close(torch.tensor(result.token_logprobs),
                                   torch.tensor(expected), atol=2e-4, rtol=1e-4)
        assert result.mean_logprob == pytest.approx(sum(expected) / NEW_TOKENS, abs=2e-4)
        assert all(v <= 0 for v in result.token_logprobs)


async def test_prompt_embedding_is_the_mean_pooled_final_normed_hidden_state(
        tiny_base_dir: Path, make_adapter: AdapterFactory) -> None:
    """What ``training/profile.py`` stores as ``embedding_served`` (the backbone's
    last_hidden_state with the adapter applied, averaged over the prompt)."""
    folder = make_adapter("writer", rank=8, seed=6)
    engine = make_engine(tiny_base_dir)
    engine.start()
    try:
        results = await asyncio.gather(*(run(engine, folder, p, f"e{i}", SamplingParams(
            max_new_tokens=2, ignore_eos=True)) for i, p in enumerate(PROMPTS)))
    finally:
        engine.stop()
    backbone = causal_lm(tiny_base_dir, folder).get_base_model().model
    for prompt, result in zip(PROMPTS, results, strict=True):
        with torch.inference_mode():
            expected = backbone(input_ids=torch.tensor([prompt])).last_hidden_state[0].mean(0)
        assert result.embedding is not None and len(result.embedding) == 64
        torch.testing.assert_close(torch.tensor(result.embedding), expected.float(),
                                   atol=2e-5, rtol=1e-4)


def test_chosen_logprobs_skip_rows_without_a_token() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 1.0, 1.0]])
    error = ValueError("x")
    values = chosen_logprobs(logits, [2, -1, error])  # type: ignore[list-item]
    assert values[0] == pytest.approx(float(logits[0].log_softmax(-1)[2]))
    assert math.isnan(values[1]) and math.isnan(values[2])


async def test_profile_reference_generations_measure_what_the_engine_measures(
        wide_logits_base_dir: Path, make_adapter: AdapterFactory) -> None:
    """The training profile's greedy reference generation (left-padded batch, KV cache,
    PEFT) gives each prompt the output length and mean log-probability the engine gives
    the same greedy request, stop token included: the live and reference figures are one
    definition."""
    folder = make_adapter("writer", rank=8, seed=7)
    engine = make_engine(wide_logits_base_dir)
    engine.start()
    try:
        first = await run(engine, folder, PROMPTS[0], "probe",
                          SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True))
        # A stop token that the first prompt's greedy answer reaches after a few tokens.
        tokens = first.token_ids
        cut = next(i for i in range(2, NEW_TOKENS) if tokens[i] not in tokens[:i])
        stop = tokens[cut]
        engine.scheduler.config = dataclasses.replace(engine.scheduler.config,
                                                      stop_token_ids=frozenset({stop}))
        live = [await run(engine, folder, p, f"g{i}", SamplingParams(max_new_tokens=NEW_TOKENS))
                for i, p in enumerate(PROMPTS)]
    finally:
        engine.stop()
    model = causal_lm(wide_logits_base_dir, folder)
    reference = generate(TaskModel(model, model.get_base_model().model, quantized=False),
                         PROMPTS, pad_id=2, stop_ids={stop}, greedy=True,
                         max_new_tokens=NEW_TOKENS, seed=0)
    assert live[0].completion_tokens == cut + 1 and live[0].finish_reason == "stop"
    for (length, mean), result in zip(reference, live, strict=True):
        assert length == result.completion_tokens
        assert result.mean_logprob == pytest.approx(mean, abs=2e-4)
