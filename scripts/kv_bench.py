"""Figures of the paged KV cache on SmolLM2 (docs/benchmarks.md): decode throughput, KV memory
held, a long prompt arriving while streams decode, and the prefix cache.

Runs against whichever loraswap is importable, so the same file measures main's code (run
it with ``PYTHONPATH`` at a checkout of main) and this branch's; the paged-only figures are
skipped on the old engine. One JSON line per figure on stdout.

    python scripts/kv_bench.py decode --label new     # base and 16 adapters, batch 32
    python scripts/kv_bench.py stall --budget 32       # 16 streams + a 2,000-token prompt
    python scripts/kv_bench.py prefix                  # 512-token prompt, 16 adapters x 8
    python scripts/kv_bench.py concurrency             # 256-token requests, 4 x 8,192 budget
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from loraswap.adapters.demo import write_random_adapter
from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.base_model.loading import Quantization, load_base_model
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.engine import EngineConfig, LoraEngine
from loraswap.service.engine.observer import NullObserver, StepKind
from loraswap.service.engine.requests import GenerationRequest
from loraswap.service.engine.sampling import SamplingParams

MODEL = Path.home() / ".cache/loraswap/models/SmolLM2-135M-Instruct"


class Recorder(NullObserver):
    """Decode step times and tokens, peak running sequences and KV blocks, prefix hits."""

    def __init__(self) -> None:
        self.decode_seconds = 0.0
        self.decode_tokens = 0
        self.peak_running = 0
        self.peak_blocks = 0
        self.lookups: list[tuple[int, int]] = []

    def engine_step(self, kind: StepKind, seconds: float, tokens: int) -> None:
        if kind == "decode":
            self.decode_seconds += seconds
            self.decode_tokens += tokens

    def scheduler_state(self, *, waiting: int, running: int) -> None:
        self.peak_running = max(self.peak_running, running)

    def kv_blocks(self, *, used: int, total: int, cached: int) -> None:
        self.peak_blocks = max(self.peak_blocks, used)

    def prefix_lookup(self, *, queried: int, hit: int) -> None:
        self.lookups.append((queried, hit))


def _emit(figure: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(figure) + "\n")
    sys.stdout.flush()


def _engine(recorder: Recorder, **config: Any) -> tuple[LoraEngine, Any]:
    loaded = load_base_model(MODEL, Quantization.BF16, "cpu")
    return LoraEngine(loaded.model, loaded.tokenizer, EngineConfig(**config), recorder), loaded


def _adapters(engine: LoraEngine, count: int, folder: Path) -> list[tuple[AdapterVersionRef, Any]]:
    out = []
    for i in range(count):
        path = write_random_adapter(MODEL, folder / f"a{i}", rank=16, seed=i,
                                    targets=("q_proj", "k_proj", "v_proj", "o_proj"))
        out.append((AdapterVersionRef.parse(f"a{i}@1"), read_lora_adapter(path)))
    return out


def _request(rid: str, prompt: list[int], tokens: int, adapter: Any = None,
             key: str = "t") -> GenerationRequest:
    return GenerationRequest(
        request_id=rid, prompt_ids=prompt, fairness_key=key,
        adapter=adapter[0] if adapter else None, adapter_weights=adapter[1] if adapter else None,
        params=SamplingParams(max_new_tokens=tokens, ignore_eos=True))


def _prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(100, 40000) for _ in range(length)]


async def _gaps(engine: LoraEngine, request: GenerationRequest) -> list[float]:
    times = []
    async for _ in engine.submit(request).events():
        times.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(times)]


async def decode(label: str) -> None:
    """32 requests of 32 prompt + 32 new tokens, base and 16 adapters: decode tokens/s and
    the KV memory held at the peak against the old per-row reservation at the defaults."""
    for adapters in (0, 16):
        recorder = Recorder()
        engine, _ = _engine(recorder, max_loras=16, max_batch_size=32, max_model_len=2048)
        with tempfile.TemporaryDirectory() as tmp:
            pool = _adapters(engine, adapters, Path(tmp))
        rng = random.Random(0)
        engine.start()
        try:
            requests = [_request(f"r{i}", _prompt(rng, 32), 32,
                                 pool[i % adapters] if adapters else None) for i in range(32)]
            await asyncio.gather(*(engine.submit(r).collect() for r in requests))
        finally:
            engine.stop()
        figure: dict[str, Any] = {
            "figure": "decode", "label": label, "adapters": adapters,
            "decode_tokens_per_s": recorder.decode_tokens / recorder.decode_seconds}
        per_token = 2 * 30 * 3 * 64 * 2  # SmolLM2 bf16: layers, kv heads, head_dim
        if hasattr(engine, "pool"):
            figure["kv_bytes_held_peak"] = recorder.peak_blocks * 16 * per_token
            figure["old_reservation_bytes"] = 32 * 2048 * per_token
        _emit(figure)


async def stall(budget: int, per_decode: float | None) -> None:
    """16 streams of 64 tokens; in one run a 2,000-token prompt arrives after their 8th
    token. p99 of the streams' inter-token gaps, steady and with the long prompt."""
    for with_long in (False, True):
        recorder = Recorder()
        engine, _ = _engine(recorder, max_batch_size=17, max_model_len=4096,
                            max_prefill_tokens=budget, prefill_tokens_per_decode=per_decode)
        rng = random.Random(1)
        engine.start()
        try:
            streams = [asyncio.create_task(_gaps(engine, _request(f"s{i}", _prompt(rng, 16),
                                                                  64))) for i in range(16)]
            if with_long:
                await asyncio.sleep(0)
                while recorder.decode_tokens < 16 * 8:  # noqa: ASYNC110 - engine-thread counter
                    await asyncio.sleep(0.01)
                long = engine.submit(_request("long", _prompt(rng, 2000), 1, key="other"))
            gaps = [g for s in await asyncio.gather(*streams) for g in s]
            if with_long:
                await long.collect()
        finally:
            engine.stop()
        gaps.sort()
        _emit({"figure": "stall", "budget": budget, "per_decode": per_decode,
               "long_prompt": with_long,
               "p99_s": gaps[int(0.99 * (len(gaps) - 1))], "max_s": gaps[-1],
               "gaps": len(gaps)})


async def prefix() -> None:
    """A 512-token system prompt + 16-token user turn, 16 adapters x 8 requests and two
    tenants on the base: prompt blocks reused on repeats, and across scopes."""
    recorder = Recorder()
    engine, _ = _engine(recorder, max_loras=16, max_batch_size=32, max_model_len=2048)
    rng = random.Random(2)
    system = _prompt(rng, 512)
    with tempfile.TemporaryDirectory() as tmp:
        pool = _adapters(engine, 16, Path(tmp))
    engine.start()
    try:
        firsts = []
        for round_ in range(8):
            batch = [_request(f"r{round_}-{i}", system + _prompt(rng, 16), 1, pool[i])
                     for i in range(16)]
            await asyncio.gather(*(engine.submit(r).collect() for r in batch))
            if round_ == 0:
                firsts = list(recorder.lookups)
        before = len(recorder.lookups)
        for tenant in ("acme", "globex"):
            await engine.submit(_request(tenant, system + [5] * 16, 1, key=tenant)).collect()
        tenants = recorder.lookups[before:]
    finally:
        engine.stop()
    repeats = recorder.lookups[16:before]
    prompt_tokens = 528 * len(repeats)
    saved = sum(hit for _, hit in repeats) * 16
    _emit({"figure": "prefix", "first_round_hits": sum(h for _, h in firsts),
           "repeat_prefill_saved": saved / prompt_tokens, "repeats": len(repeats),
           "tenant_hits": [h for _, h in tenants]})


async def concurrency(requests: int) -> None:
    """Sequences running at once for 256-token requests (200 prompt + 56 new) with
    max_model_len 8,192 at one KV budget: 4 x 8,192 tokens, what the old per-row cache
    needs for 4 rows. A tiny random Llama (2 layers): the count depends on the budget in
    tokens, not on the weights."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=49152,
                         max_position_embeddings=8192, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    per_token = 2 * 2 * 2 * 16 * 4  # layers, k+v, kv heads, head_dim, fp32
    recorder = Recorder()
    engine = LoraEngine(model, tokenizer, EngineConfig(
        max_model_len=8192, max_batch_size=requests, max_queue=requests,
        kv_cache_bytes=4 * 8192 * per_token, max_prefill_tokens=8192), recorder)
    rng = random.Random(3)
    engine.start()
    try:
        await asyncio.gather(*(engine.submit(_request(f"c{i}", _prompt(rng, 200), 56)).collect()
                               for i in range(requests)))
    finally:
        engine.stop()
    _emit({"figure": "concurrency", "budget_tokens": 4 * 8192, "old_rows": 4,
           "peak_running": recorder.peak_running, "peak_blocks": recorder.peak_blocks})


def main() -> None:
    """Parse the figure to measure and run it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("figure", choices=["decode", "stall", "prefix", "concurrency"])
    parser.add_argument("--label", default="new")
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--per-decode", type=float, default=None,
                        help="prefill_tokens_per_decode (default: the engine's, 1.0 on a CPU)")
    args = parser.parse_args()
    torch.manual_seed(0)
    _emit({"cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()})
    if args.figure == "decode":
        asyncio.run(decode(args.label))
    elif args.figure == "concurrency":
        asyncio.run(concurrency(256))
    elif args.figure == "stall":
        asyncio.run(stall(args.budget, args.per_decode))
    else:
        asyncio.run(prefix())


if __name__ == "__main__":
    main()
