"""The engine benchmark's scenarios, run in one process: the engine with 0 to 64 adapters,
Poisson arrivals, adapter load latency, and naive and batched PEFT serving, all on one torch
thread, side by side (``loraswap bench engine``; the options are ``loraswap/bench_cmd.py``'s).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from loraswap.bench.outcome import BenchOptions, BenchOutcome

ENGINE_SCENARIOS: dict[str, int] = {"base": 0, "lora1": 1, "lora4": 4, "lora16": 16,
                                    "lora32": 32, "lora64": 64}
ALL_SCENARIOS = (*ENGINE_SCENARIOS, "naive", "peft-mixed", "poisson", "load")
DEFAULT_SCENARIOS = ",".join(ALL_SCENARIOS)
PEFT_ADAPTERS = 16
POISSON_ADAPTERS = 16
POISSON_LOAD = 0.7


def log(message: str) -> None:
    """Progress on stderr, so the report on stdout stays clean."""
    typer.echo(f"[bench] {message}", err=True)


def _record(results: list[Any], result: Any) -> None:
    """Append a finished scenario, noting the host's load average at its end."""
    result.host_load = os.getloadavg()[0]
    results.append(result)
    log(f"{result.scenario}: {result.tokens_per_s:.1f} tok/s, {result.wall_s:.1f}s, "
         f"load average {result.host_load:.2f}")


@dataclass
class _Run:
    """What the scenarios of one precision share: the torch thread, model and workload."""

    opts: BenchOptions
    precision: str
    thread: Any  # service.engine.engine_thread.EngineThread (imported lazily)
    folders: list[Path]
    model: Any
    tokenizer: Any
    prompts: list[list[int]]
    engine_run: Any  # loraswap.bench.engine_bench.EngineRun
    decoded: list[Any]

    def on_thread(self, fn: Any) -> Any:
        """Run ``fn`` on the torch thread and wait for its result."""
        return self.thread.call(fn).result()


def _adapters_needed(opts: BenchOptions) -> int:
    selected = set(opts.scenarios)
    needed = [ENGINE_SCENARIOS[s] for s in selected if s in ENGINE_SCENARIOS]
    if selected & {"naive", "peft-mixed"}:
        needed.append(PEFT_ADAPTERS)
    if "poisson" in selected:
        needed.append(POISSON_ADAPTERS)
    if "load" in selected:
        needed.append(opts.load_adapters)
    return max(needed, default=0)


def _prepare(opts: BenchOptions, precision: str) -> _Run:
    """Adapters on disk, the base model in ``precision`` and the prompts, on a torch thread."""
    from loraswap.bench.engine_bench import EngineRun, read_adapters
    from loraswap.bench.workload import (
        AdapterSpec,
        build_prompts,
        ensure_adapters,
        load_base,
        parse_targets,
    )
    from loraswap.service.engine.engine_thread import EngineThread

    # All torch work on one thread, as in the service (a second thread running torch ops
    # slows the first one down measurably on this CPU).
    thread = EngineThread(opts.threads, name="bench-torch")
    thread.start()
    spec = AdapterSpec(rank=opts.rank, alpha=opts.alpha, targets=parse_targets(opts.targets))
    started = time.perf_counter()
    folders = ensure_adapters(opts.adapter_dir, opts.base_model, _adapters_needed(opts), spec)
    log(f"{len(folders)} adapters ({spec.tag}) ready in {opts.adapter_dir} "
         f"({time.perf_counter() - started:.1f}s)")
    model, tokenizer = thread.call(
        lambda: load_base(opts.base_model, opts.device, precision)).result()
    engine_counts = [ENGINE_SCENARIOS[s] for s in opts.scenarios if s in ENGINE_SCENARIOS]
    decoded = thread.call(lambda: read_adapters(
        folders[:max([*engine_counts, POISSON_ADAPTERS])])).result()
    run = EngineRun(
        max_new_tokens=opts.max_tokens, concurrency=opts.concurrency,
        max_batch_size=opts.max_batch_size, max_lora_rank=opts.rank,
        max_model_len=max(64, opts.prompt_tokens + opts.max_tokens + 8),
    )
    return _Run(opts, precision, thread, folders, model, tokenizer,
                build_prompts(tokenizer, opts.requests, opts.prompt_tokens), run, decoded)


def _engine_scenario(ctx: _Run, name: str, count: int,
                     poisson_rate: float | None = None) -> Any:
    from loraswap.bench.engine_bench import run_engine_scenario

    return run_engine_scenario(name, ctx.model, ctx.tokenizer, ctx.prompts,
                               ctx.decoded[:count], ctx.engine_run, poisson_rate=poisson_rate,
                               thread=ctx.thread)


def _run_engine_scenarios(ctx: _Run, results: list[Any]) -> None:
    for name in ctx.opts.scenarios:
        if name in ENGINE_SCENARIOS:
            log(f"{name}: {len(ctx.prompts)} requests x {ctx.opts.max_tokens} tokens")
            _record(results, _engine_scenario(ctx, name, ENGINE_SCENARIOS[name]))


def _run_poisson(ctx: _Run, results: list[Any]) -> None:
    rate = ctx.opts.poisson_rate
    if rate is None:
        reference = next((r for r in results if r.scenario == "lora16"), None)
        if reference is None:
            log("poisson: measuring lora16 first to pick the arrival rate")
            reference = _engine_scenario(ctx, "lora16", 16)
            _record(results, reference)
        rate = POISSON_LOAD * reference.tokens_per_s / ctx.opts.max_tokens
    log(f"poisson: {len(ctx.prompts)} requests at {rate:.2f} req/s")
    _record(results, _engine_scenario(ctx, "poisson", POISSON_ADAPTERS, poisson_rate=rate))


def _run_peft(ctx: _Run, results: list[Any]) -> None:
    from loraswap.bench.peft_baselines import build_peft_model, run_naive_server, run_peft_mixed
    from loraswap.bench.workload import load_base

    opts = ctx.opts
    ctx.model = None  # the engine's copy goes before PEFT's is loaded
    peft_base, _ = ctx.on_thread(lambda: load_base(opts.base_model, opts.device,
                                                   ctx.precision))
    peft_model, names = ctx.on_thread(lambda: build_peft_model(peft_base,
                                                               ctx.folders[:PEFT_ADAPTERS]))
    if "naive" in opts.scenarios:
        naive_prompts = ctx.prompts[:opts.naive_requests or len(ctx.prompts)]
        log(f"naive: {len(naive_prompts)} requests, one at a time")
        _record(results, run_naive_server(peft_model, names, ctx.tokenizer, naive_prompts,
                                          opts.max_tokens, opts.concurrency,
                                          submit=ctx.thread.call))
    if "peft-mixed" in opts.scenarios:
        log(f"peft-mixed: {len(ctx.prompts)} requests in batches of {opts.max_batch_size}")
        _record(results, ctx.on_thread(lambda: run_peft_mixed(
            peft_model, names, ctx.tokenizer, ctx.prompts, opts.max_tokens,
            opts.max_batch_size)))


def run_benchmark(opts: BenchOptions, precision: str = "bf16") -> BenchOutcome:
    """Run the selected in-process scenarios with the base model in ``precision``."""
    from loraswap.bench.engine_bench import measure_load_latency
    from loraswap.bench.roofline import flops_per_token, gemm_peak_gflops

    ctx = _prepare(opts, precision)
    results: list[Any] = []
    flops = flops_per_token(ctx.model)
    dtype = next(ctx.model.parameters()).dtype
    log(f"GEMM peak in {dtype}")
    peak = ctx.on_thread(lambda: gemm_peak_gflops(dtype))
    _run_engine_scenarios(ctx, results)
    if "poisson" in ctx.opts.scenarios:
        _run_poisson(ctx, results)
    load = None
    if "load" in ctx.opts.scenarios:
        log(f"load: {opts.load_adapters} adapters disk -> slot")
        load = ctx.on_thread(lambda: measure_load_latency(
            ctx.model, ctx.tokenizer, ctx.folders[:opts.load_adapters], ctx.engine_run))
    if set(opts.scenarios) & {"naive", "peft-mixed"}:
        _run_peft(ctx, results)
    ctx.thread.stop()
    order = {name: i for i, name in enumerate(ALL_SCENARIOS)}
    results.sort(key=lambda r: order.get(r.scenario, len(order)))
    return BenchOutcome(precision, results, load, peak, flops)


def run_http_mode(opts: BenchOptions, url: str, models: list[str],
                  api_key: str | None) -> Any:
    """The workload over HTTP; only the base model's tokenizer is loaded (for the prompts)."""
    from transformers import AutoTokenizer

    from loraswap.bench.http_bench import run_http
    from loraswap.bench.workload import build_prompts

    tokenizer = AutoTokenizer.from_pretrained(str(opts.base_model), local_files_only=True)
    prompts = [tokenizer.decode(ids) for ids in
               build_prompts(tokenizer, opts.requests, opts.prompt_tokens)]
    log(f"http: {len(prompts)} requests to {url}, models {','.join(models)}")
    return run_http(url, models, prompts, opts.max_tokens, opts.concurrency, api_key)


