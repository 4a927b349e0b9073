"""Mask overhead of structured output: a batch of 32 where 16 rows decode under a JSON
Schema and 16 are free, against the same batch with no constraint (throughput ratio).

Every row generates exactly ``--tokens`` tokens (free rows ignore EOS; the schema needs
more tokens than that to close), so both runs do the same forward passes and the ratio is
the cost of the masks alone. Usage (records go to docs/benchmarks.md)::

    flock /work/heavy.lock .venv/bin/python scripts/structured_overhead.py \
        --model ~/.cache/loraswap/models/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

import torch

from loraswap.base_model.loading import Quantization, load_base_model
from loraswap.service.engine.engine import EngineConfig, LoraEngine
from loraswap.service.engine.grammar import GrammarCompiler, GrammarSpec
from loraswap.service.engine.observer import NullObserver
from loraswap.service.engine.requests import GenerationRequest
from loraswap.service.engine.sampling import SamplingParams

SCHEMA = {"type": "object", "required": ["values"], "additionalProperties": False,
          "properties": {"values": {"type": "array", "minItems": 60, "items": {
              "type": "integer", "minimum": 0, "maximum": 999}}}}


async def run_batch(engine: LoraEngine, params: list[SamplingParams]) -> tuple[float, int]:
    """Wall seconds and generated tokens of one batch of requests."""
    start = time.perf_counter()
    streams = [engine.submit(GenerationRequest(request_id=f"r{i}", prompt_ids=[1, 28, 30 + i],
                                               params=p)) for i, p in enumerate(params)]
    results = await asyncio.gather(*(s.collect() for s in streams))
    return time.perf_counter() - start, sum(r.completion_tokens for r in results)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loaded = load_base_model(args.model, Quantization.FP32, "cpu")
    engine = LoraEngine(loaded.model, loaded.tokenizer, EngineConfig(
        max_loras=1, max_lora_rank=8, max_batch_size=32, max_model_len=256),
        NullObserver())
    compiled = GrammarCompiler(loaded.tokenizer).compile(GrammarSpec.json_schema(SCHEMA))
    free = [SamplingParams(max_new_tokens=args.tokens, temperature=1.0, seed=i,
                           ignore_eos=True) for i in range(32)]
    mixed = [SamplingParams(max_new_tokens=args.tokens, temperature=1.0, seed=i,
                            grammar=compiled) if i % 2 else free[i] for i in range(32)]
    engine.start()
    try:
        await run_batch(engine, free)  # warm-up
        figures: dict[str, list[float]] = {"free": [], "mixed": []}
        for _ in range(args.repeats):
            for name, batch in (("free", free), ("mixed", mixed)):
                seconds, tokens = await run_batch(engine, batch)
                assert tokens == 32 * args.tokens, tokens
                figures[name].append(tokens / seconds)
    finally:
        engine.stop()
    best = {k: max(v) for k, v in figures.items()}
    print(json.dumps({  # noqa: T201 (a script: its output is the figure)
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "tokens_per_s_free": round(best["free"], 1), "tokens_per_s_mixed": round(best["mixed"], 1),
        "ratio": round(best["mixed"] / best["free"], 3), "runs": figures}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
