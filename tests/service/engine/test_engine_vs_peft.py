"""The engine's outputs for mixed-adapter batches equal PEFT's outputs for each adapter alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.engine.engine import LoraEngine
from tests.service.engine import references
from tests.service.engine.references import make_engine

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
    return references.peft_greedy(base_dir, adapter_dir, prompt, NEW_TOKENS)


@pytest.fixture
def adapters(make_adapter) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    return {name: make_adapter(name, **spec) for name, spec in ADAPTER_SPECS.items()}


async def run_request(engine: LoraEngine, name: str | None, adapters: dict[str, Path],
                      prompt: list[int], rid: str) -> list[int]:
    folder = adapters[name] if name is not None else None
    return await references.engine_greedy(engine, name, folder, prompt, NEW_TOKENS, rid)


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
    """Requests that arrive while others are decoding get the output they would alone."""
    engine = make_engine(tiny_base_dir, max_loras=4)
    engine.start()
    try:
        first = [asyncio.create_task(run_request(engine, n, adapters, p, f"a{i}"))
                 for i, (n, p) in enumerate([("qv-r4", PROMPTS[0]), ("all-r8", PROMPTS[1])])]
        await asyncio.sleep(0.05)
        second = [asyncio.create_task(run_request(engine, n, adapters, p, f"b{i}"))
                  for i, (n, p) in enumerate([("mlp-r2", PROMPTS[2]), ("qv-r4", PROMPTS[3]),
                                              (None, PROMPTS[4])])]
        got = await asyncio.gather(*first, *second)
    finally:
        engine.stop()
    specs = [("qv-r4", PROMPTS[0]), ("all-r8", PROMPTS[1]), ("mlp-r2", PROMPTS[2]),
             ("qv-r4", PROMPTS[3]), (None, PROMPTS[4])]
    for (name, prompt), tokens in zip(specs, got, strict=True):
        assert tokens == peft_greedy(tiny_base_dir, adapters[name] if name else None, prompt)
