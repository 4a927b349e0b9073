"""Our engine, driven in-process: closed-loop and Poisson open-loop runs, adapter loads."""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswap.adapters.lora_format import LoraAdapterWeights, read_lora_adapter
from loraswap.bench.report import (
    LoadLatencyResult,
    RequestTiming,
    ScenarioResult,
    closed_loop_clients,
)
from loraswap.bench.roofline import StepTotals
from loraswap.core.identity import AdapterRef, AdapterVersionRef, Version
from loraswap.service.engine.engine import EngineConfig, LoraEngine
from loraswap.service.engine.engine_thread import EngineThread
from loraswap.service.engine.observer import EngineObserver, NullObserver
from loraswap.service.engine.requests import GenerationRequest
from loraswap.service.engine.sampling import SamplingParams

Adapter = tuple[AdapterVersionRef, LoraAdapterWeights]


@dataclass(frozen=True)
class EngineRun:
    """How the engine scenarios are sized."""

    max_new_tokens: int = 64
    concurrency: int = 32
    max_batch_size: int = 32
    max_lora_rank: int = 16
    max_model_len: int = 256


def read_adapters(folders: list[Path]) -> list[Adapter]:
    """Decode adapter folders (untimed preparation) into (key, weights) pairs."""
    return [(AdapterRef(None, f.name).at(Version.of(1)), read_lora_adapter(f)) for f in folders]


def make_engine(model: Any, tokenizer: Any, num_adapters: int, run: EngineRun,
                thread: EngineThread | None = None,
                observer: EngineObserver | None = None) -> LoraEngine:
    """An engine with one slot per distinct adapter (at least one), on ``thread``."""
    config = EngineConfig(
        max_loras=max(1, num_adapters), max_lora_rank=run.max_lora_rank,
        max_cpu_loras=max(64, num_adapters), max_batch_size=run.max_batch_size,
        max_model_len=run.max_model_len, max_queue=4096,
    )
    watcher = observer or NullObserver()
    if thread is None:
        return LoraEngine(model, tokenizer, config, watcher)
    return thread.call(
        lambda: LoraEngine(model, tokenizer, config, watcher, thread)).result()


async def timed_request(engine: LoraEngine, request_id: str, prompt: list[int],
                        adapter: Adapter | None, max_new_tokens: int) -> RequestTiming:
    """Submit one greedy request that produces exactly ``max_new_tokens`` tokens; time it."""
    started = time.perf_counter()
    request = GenerationRequest(
        request_id=request_id, prompt_ids=prompt,
        params=SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True),
        adapter=adapter[0] if adapter else None,
        adapter_weights=adapter[1] if adapter else None,
        fairness_key=adapter[0].name if adapter else "base",
    )
    first: float | None = None
    tokens = 0
    async for event in engine.submit(request).events():
        if event.token_ids and first is None:
            first = time.perf_counter()
        tokens += len(event.token_ids)
    ended = time.perf_counter()
    return RequestTiming(ttft_s=(first or ended) - started, latency_s=ended - started,
                         output_tokens=tokens)


def _adapter_of(index: int, adapters: list[Adapter]) -> Adapter | None:
    return adapters[index % len(adapters)] if adapters else None


async def closed_loop(engine: LoraEngine, prompts: list[list[int]], adapters: list[Adapter],
                      run: EngineRun) -> tuple[list[RequestTiming], float]:
    """``run.concurrency`` clients, each sending its next request when the last one ends;
    adapters round-robin over requests. Returns the timings and the wall time."""
    return await closed_loop_clients(len(prompts), run.concurrency, lambda index: timed_request(
        engine, f"r{index}", prompts[index], _adapter_of(index, adapters), run.max_new_tokens))


async def poisson_loop(engine: LoraEngine, prompts: list[list[int]], adapters: list[Adapter],
                       run: EngineRun, rate: float,
                       seed: int = 0) -> tuple[list[RequestTiming], float, float]:
    """Open loop: requests arrive as a Poisson process of ``rate`` per second, whatever the
    engine's progress. Returns the timings, the time from first arrival to last end, and
    the time from first to last arrival."""
    rng = random.Random(seed)
    arrivals: list[float] = []
    clock = 0.0
    for _ in prompts:
        arrivals.append(clock)
        clock += rng.expovariate(rate)
    started = time.perf_counter()
    tasks: list[asyncio.Task[RequestTiming]] = []
    for index, arrival in enumerate(arrivals):
        delay = started + arrival - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed_request(
            engine, f"p{index}", prompts[index], _adapter_of(index, adapters),
            run.max_new_tokens,
        )))
    timings = list(await asyncio.gather(*tasks))
    return timings, time.perf_counter() - started, arrivals[-1]


async def _warm_up(engine: LoraEngine, prompt: list[int]) -> None:
    await asyncio.gather(*(timed_request(engine, f"w{i}", prompt, None, 4) for i in range(2)))


def run_engine_scenario(
    name: str, model: Any, tokenizer: Any, prompts: list[list[int]], adapters: list[Adapter],
    run: EngineRun, poisson_rate: float | None = None, thread: EngineThread | None = None,
) -> ScenarioResult:
    """One scenario on a fresh engine (slots = distinct adapters): closed loop, or open loop
    when ``poisson_rate`` is given. Slots start empty, so first loads are measured too.
    The result carries the decode steps' seconds and tokens (warm-up included)."""
    totals = StepTotals()
    engine = make_engine(model, tokenizer, len(adapters), run, thread, totals)
    engine.start()

    async def body() -> tuple[list[RequestTiming], float, float]:
        await _warm_up(engine, prompts[0])
        if poisson_rate is None:
            return (*await closed_loop(engine, prompts, adapters, run), 0.0)
        return await poisson_loop(engine, prompts, adapters, run, poisson_rate)

    try:
        timings, wall, arrival_span = asyncio.run(body())
    finally:
        engine.stop()
    used = len({i % len(adapters) for i in range(len(prompts))}) if adapters else 0
    notes = []
    if len(adapters) > used:
        notes.append(f"{len(adapters)} adapters loaded, {used} used by {len(prompts)} requests")
    if poisson_rate is not None:
        realized = (len(timings) - 1) / arrival_span if arrival_span > 0 else math.nan
        notes.append(
            f"open loop, Poisson {poisson_rate:.2f} req/s (realized {realized:.2f} over "
            f"{arrival_span:.1f}s of arrivals); tok/s over arrivals + drain ({wall:.1f}s)"
        )
    else:
        notes.append(f"closed loop, {min(run.concurrency, len(prompts))} clients")
    result = ScenarioResult.from_timings(name, used, timings, wall, note="; ".join(notes))
    result.decode_seconds, result.decode_tokens = totals.decode_seconds, totals.decode_tokens
    return result


def measure_load_latency(model: Any, tokenizer: Any, folders: list[Path],
                         run: EngineRun) -> LoadLatencyResult:
    """Time each adapter from local disk into host memory (``read_lora_adapter``) and from
    there into an engine slot (``engine.table.load``). Files are in the page cache when just
    written, so "read" is mostly safetensors decoding and validation."""
    engine = make_engine(model, tokenizer, 4, EngineRun(
        max_new_tokens=1, concurrency=1, max_batch_size=1,
        max_lora_rank=run.max_lora_rank, max_model_len=16,
    ))
    # One untimed load first, so one-time costs (imports, allocator) are not in the figures.
    engine.table.load(1, read_lora_adapter(folders[0]))
    read_s: list[float] = []
    copy_s: list[float] = []
    rank = 0
    targets: tuple[str, ...] = ()
    for index, folder in enumerate(folders):
        started = time.perf_counter()
        weights = read_lora_adapter(folder)
        read = time.perf_counter()
        engine.table.load(index % engine.table.max_loras + 1, weights)
        copied = time.perf_counter()
        read_s.append(read - started)
        copy_s.append(copied - read)
        rank, targets = weights.rank, weights.config.target_modules
    return LoadLatencyResult(rank=rank, targets=targets, read_s=read_s, copy_s=copy_s)
