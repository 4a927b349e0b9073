"""Log-probabilities the engine returns (generated and prompt tokens) equal transformers +
PEFT's ``log_softmax`` for the same tokens, in a batch that mixes adapters, the base, and
rows that ask for nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.engine import LoraEngine
from loraswap.service.engine.requests import GenerationEvent, GenerationRequest
from loraswap.service.engine.sampling import SamplingParams
from tests.service.engine.references import causal_lm
from tests.utils.engine import make_engine

TOP = 3


async def run(engine: LoraEngine, name: str | None, folder: Path | None, prompt: list[int],
              params: SamplingParams, rid: str) -> GenerationEvent:
    key = weights = None
    if name is not None and folder is not None:
        key = AdapterVersionRef.parse(f"{name}@1")
        weights = await engine.adapter_weights(key, lambda: read_lora_adapter(folder))
    return await engine.submit(GenerationRequest(
        request_id=rid, prompt_ids=prompt, params=params, adapter=key,
        adapter_weights=weights)).collect()


def reference_logprobs(base_dir: Path, folder: Path | None, ids: list[int]) -> torch.Tensor:
    """PEFT's log_softmax at every position of ``ids`` (row i predicts token i + 1)."""
    with torch.inference_mode():
        logits = causal_lm(base_dir, folder)(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


@pytest.mark.parametrize("limits", [{}, {"max_prefill_tokens": 3, "kv_block_size": 2}],
                         ids=["whole-prefill", "chunked-prefill"])
async def test_logprobs_equal_peft_log_softmax_in_a_mixed_batch(
        tiny_base_dir: Path, make_adapter, limits: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    """Also with prompts split over several prefill chunks (3 tokens a step): the prompt's
    log-probabilities are gathered chunk by chunk."""
    folders = {"a": make_adapter("a", rank=4, seed=1),
               "b": make_adapter("b", rank=8, targets=("q_proj", "v_proj", "down_proj"),
                                 seed=2)}
    engine = make_engine(tiny_base_dir, **limits)
    asked = SamplingParams(max_new_tokens=5, ignore_eos=True, temperature=0.8, seed=7,
                           logprobs=TOP, prompt_logprobs=TOP)
    plain = SamplingParams(max_new_tokens=5, ignore_eos=True)
    specs: list[tuple[str | None, list[int], SamplingParams]] = [
        ("a", [5, 6, 7, 8, 9, 10, 11, 12], asked), ("b", [11, 12, 13], asked),
        (None, [40, 41, 42], asked),
        ("a", [70, 71, 72], plain)]
    engine.start()
    try:
        results = await asyncio.gather(*(
            run(engine, n, folders.get(n) if n else None, p, s, f"r{i}")
            for i, (n, p, s) in enumerate(specs)))
    finally:
        engine.stop()
    for (name, prompt, params), result in zip(specs, results, strict=True):
        if params is plain:
            assert result.logprobs == () and result.prompt_logprobs is None
            continue
        ids = prompt + list(result.token_ids)
        expected = reference_logprobs(tiny_base_dir, folders.get(name) if name else None, ids)
        assert result.prompt_logprobs is not None and result.prompt_logprobs[0] is None
        entries = [*result.prompt_logprobs[1:], *result.logprobs]
        assert len(entries) == len(ids) - 1
        for position, entry in enumerate(entries):
            assert entry is not None and entry.token == ids[position + 1]
            row = expected[position]
            assert abs(entry.logprob - float(row[entry.token])) < 1e-4, (name, position)
            top_values, top_ids = row.topk(TOP)
            assert [t for t, _ in entry.top] == top_ids.tolist()
            torch.testing.assert_close(torch.tensor([v for _, v in entry.top]), top_values,
                                       atol=1e-4, rtol=0)


async def test_stop_token_ids_end_the_sequence_like_eos(tiny_base_dir: Path) -> None:
    """A request's own stop token ends it with finish_reason stop at that token; without
    it, the same greedy request runs to its length."""
    engine = make_engine(tiny_base_dir)
    engine.start()
    try:
        free = await run(engine, None, None, [5, 6, 7], SamplingParams(
            max_new_tokens=6, ignore_eos=True), "free")
        third = free.token_ids[2]
        first_at = free.token_ids.index(third)
        stopped = await run(engine, None, None, [5, 6, 7], SamplingParams(
            max_new_tokens=6, ignore_eos=True, stop_token_ids=(third,)), "stopped")
    finally:
        engine.stop()
    assert free.finish_reason == "length"
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[: first_at + 1]
