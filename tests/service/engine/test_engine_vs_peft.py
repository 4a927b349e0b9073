"""The engine's outputs for mixed-adapter batches equal PEFT's outputs for each adapter alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.engine import LoraEngine
from loraswap.service.engine.requests import GenerationRequest
from loraswap.service.engine.sampling import SamplingParams
from tests.utils.engine import StepGate, make_engine

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_SPECS = {
    "qv-r4": dict(rank=4, targets=("q_proj", "v_proj"), seed=1),
    "all-r8": dict(rank=8, targets=ALL_TARGETS, seed=2),
    "mlp-r2": dict(rank=2, targets=("down_proj", "up_proj"), seed=3),
    "ko-r16": dict(rank=16, targets=("k_proj", "o_proj"), seed=4),
}
NEW_TOKENS = 10


def peft_greedy(base_dir: Path, adapter_dir: Path | None, prompt: list[int]) -> list[int]:
    """Greedy tokens from PEFT with the adapter alone (the reference)."""
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    # No EOS, so greedy runs the full length (min_new_tokens would mask EOS out instead,
    # which is not greedy decoding).
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=2,
        )
    return out[0, len(prompt):].tolist()


@pytest.fixture
def adapters(make_adapter) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    return {name: make_adapter(name, **spec) for name, spec in ADAPTER_SPECS.items()}


async def generation_request(engine: LoraEngine, name: str | None,
                             adapters: dict[str, Path], prompt: list[int],
                             rid: str) -> GenerationRequest:
    """A greedy request for ``NEW_TOKENS`` tokens with the adapter's weights read."""
    key = weights = None
    if name is not None:
        key = AdapterVersionRef.parse(f"{name}@1")
        folder = adapters[name]
        weights = await engine.adapter_weights(key, lambda: read_lora_adapter(folder))
    return GenerationRequest(
        request_id=rid, prompt_ids=prompt, adapter=key, adapter_weights=weights,
        params=SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True),
    )


async def collect_tokens(engine: LoraEngine, request: GenerationRequest) -> list[int]:
    """Submit ``request`` and return its tokens (all ``NEW_TOKENS`` of them)."""
    result = await engine.submit(request).collect()
    assert result.completion_tokens == NEW_TOKENS
    return list(result.token_ids)


async def run_request(engine: LoraEngine, name: str | None, adapters: dict[str, Path],
                      prompt: list[int], rid: str) -> list[int]:
    return await collect_tokens(
        engine, await generation_request(engine, name, adapters, prompt, rid))


PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [40, 41, 42, 43, 44, 45, 46, 47, 48], [70, 71],
           [100, 101, 102, 103], [150, 151, 152, 153, 154], [200, 7, 9], [33, 34, 35, 36]]


async def test_mixed_batch_matches_peft_with_eviction(tiny_base_dir: Path,
                                                      adapters: dict[str, Path]) -> None:
    """8 concurrent requests over 4 adapters and the base, with only 2 slots: every output
    equals PEFT's for that adapter alone, although slots are evicted and reused."""
    engine = make_engine(tiny_base_dir, max_loras=2)
    engine.start()
    try:
        names: list[str | None] = ["qv-r4", "all-r8", "mlp-r2", "ko-r16", None,
                                   "all-r8", "qv-r4", "ko-r16"]
        results = await asyncio.gather(*(
            run_request(engine, name, adapters, prompt, f"r{i}")
            for i, (name, prompt) in enumerate(zip(names, PROMPTS, strict=True))
        ))
    finally:
        engine.stop()
    for name, prompt, got in zip(names, PROMPTS, results, strict=True):
        expected = peft_greedy(tiny_base_dir, adapters[name] if name else None, prompt)
        assert got == expected, f"adapter {name}: engine {got} != PEFT {expected}"
    # Adapters really differ from each other and from the base on the same prompt.
    outputs = {peft_greedy(tiny_base_dir, adapters[n], PROMPTS[0]).__repr__()
               for n in ADAPTER_SPECS}
    assert len(outputs) == len(ADAPTER_SPECS)


async def test_requests_joining_mid_generation_match_running_alone(
        tiny_base_dir: Path, adapters: dict[str, Path]) -> None:
    """Requests that arrive while others are decoding get the output they would alone.

    The engine thread is held after its third step (the first two requests have 3 of
    their 10 tokens); the other three are queued then, so they join a running batch."""
    gate = StepGate(pause_after=3)
    engine = make_engine(tiny_base_dir, observer=gate, max_loras=4)
    specs = [("qv-r4", PROMPTS[0]), ("all-r8", PROMPTS[1]), ("mlp-r2", PROMPTS[2]),
             ("qv-r4", PROMPTS[3]), (None, PROMPTS[4])]
    engine.start()
    try:
        # Weights are read (on the engine thread) before it is held.
        requests = [await generation_request(engine, n, adapters, p, f"r{i}")
                    for i, (n, p) in enumerate(specs)]
        first = [asyncio.create_task(collect_tokens(engine, r)) for r in requests[:2]]
        await gate.wait_paused()
        assert not any(task.done() for task in first)
        second = [asyncio.create_task(collect_tokens(engine, r)) for r in requests[2:]]
        await asyncio.sleep(0)  # the tasks submit their requests
        assert engine.scheduler.num_waiting == 3
        gate.resume()
        got = await asyncio.gather(*first, *second)
    finally:
        gate.resume()
        engine.stop()
    # It really joined: a step ran all five (the first two had at most 3 of 10 tokens).
    assert max(gate.running_per_step) == 5, gate.running_per_step
    for (name, prompt), tokens in zip(specs, got, strict=True):
        assert tokens == peft_greedy(tiny_base_dir, adapters[name] if name else None, prompt)
