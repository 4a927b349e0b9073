"""``loraswap bench``: the project's benchmarks as subcommands (``engine``, ``train-step``,
``quantization``, ``quality``, ``drift``, ``drift-separation``); ``engine`` measures the
engine against PEFT serving in one run.

``engine`` is also runnable without the main CLI as ``python -m loraswap.bench_cmd [OPTIONS]``.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from loraswap.adapters.base_model import DEFAULT_BASE_MODEL_DIR
from loraswap.adapters.precision import CpuFeatures, PrecisionChoice, choose_cpu_precision
from loraswap.bench.outcome import BenchOptions, BenchOutcome, render_report

ENGINE_SCENARIOS: dict[str, int] = {"base": 0, "lora1": 1, "lora4": 4, "lora16": 16,
                                    "lora32": 32, "lora64": 64}
ALL_SCENARIOS = (*ENGINE_SCENARIOS, "naive", "peft-mixed", "poisson", "load")
DEFAULT_SCENARIOS = ",".join(ALL_SCENARIOS)
PEFT_ADAPTERS = 16
POISSON_ADAPTERS = 16
POISSON_LOAD = 0.7


def parse_scenarios(spec: str) -> tuple[str, ...]:
    """Comma-separated scenario names, validated, in the canonical order."""
    names = {part.strip() for part in spec.split(",") if part.strip()}
    unknown = names - set(ALL_SCENARIOS)
    if unknown or not names:
        raise typer.BadParameter(
            f"unknown scenarios {sorted(unknown)}; choose from {DEFAULT_SCENARIOS}"
        )
    return tuple(s for s in ALL_SCENARIOS if s in names)


def _log(message: str) -> None:
    typer.echo(f"[bench] {message}", err=True)


def _record(results: list[Any], result: Any) -> None:
    """Append a finished scenario, noting the host's load average at its end."""
    result.host_load = os.getloadavg()[0]
    results.append(result)
    _log(f"{result.scenario}: {result.tokens_per_s:.1f} tok/s, {result.wall_s:.1f}s, "
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
    _log(f"{len(folders)} adapters ({spec.tag}) ready in {opts.adapter_dir} "
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
            _log(f"{name}: {len(ctx.prompts)} requests x {ctx.opts.max_tokens} tokens")
            _record(results, _engine_scenario(ctx, name, ENGINE_SCENARIOS[name]))


def _run_poisson(ctx: _Run, results: list[Any]) -> None:
    rate = ctx.opts.poisson_rate
    if rate is None:
        reference = next((r for r in results if r.scenario == "lora16"), None)
        if reference is None:
            _log("poisson: measuring lora16 first to pick the arrival rate")
            reference = _engine_scenario(ctx, "lora16", 16)
            _record(results, reference)
        rate = POISSON_LOAD * reference.tokens_per_s / ctx.opts.max_tokens
    _log(f"poisson: {len(ctx.prompts)} requests at {rate:.2f} req/s")
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
        _log(f"naive: {len(naive_prompts)} requests, one at a time")
        _record(results, run_naive_server(peft_model, names, ctx.tokenizer, naive_prompts,
                                          opts.max_tokens, opts.concurrency,
                                          submit=ctx.thread.call))
    if "peft-mixed" in opts.scenarios:
        _log(f"peft-mixed: {len(ctx.prompts)} requests in batches of {opts.max_batch_size}")
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
    _log(f"GEMM peak in {dtype}")
    peak = ctx.on_thread(lambda: gemm_peak_gflops(dtype))
    _run_engine_scenarios(ctx, results)
    if "poisson" in ctx.opts.scenarios:
        _run_poisson(ctx, results)
    load = None
    if "load" in ctx.opts.scenarios:
        _log(f"load: {opts.load_adapters} adapters disk -> slot")
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
    _log(f"http: {len(prompts)} requests to {url}, models {','.join(models)}")
    return run_http(url, models, prompts, opts.max_tokens, opts.concurrency, api_key)


def bench(
    base_model: Path = typer.Option(DEFAULT_BASE_MODEL_DIR, "--base-model",
                                    help="Base model folder (safetensors + tokenizer)."),
    scenarios: str = typer.Option(DEFAULT_SCENARIOS, "--scenarios",
                                  help="Comma-separated subset of scenarios to run."),
    requests: int = typer.Option(32, "--requests", min=1, help="Requests per scenario."),
    concurrency: int = typer.Option(32, "--concurrency", min=1,
                                    help="Closed-loop clients (all start at once)."),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens", min=1, help="Tokens per prompt."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1,
                                   help="Output tokens per request (EOS ignored)."),
    naive_requests: int | None = typer.Option(
        None, "--naive-requests", min=1, help="Requests for the naive server (default: all)."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", min=1,
                                       help="Engine batch size and PEFT mixed batch size."),
    rank: int = typer.Option(16, "--rank", min=1, help="LoRA rank of the random adapters."),
    alpha: float = typer.Option(32.0, "--alpha", help="LoRA alpha of the random adapters."),
    targets: str = typer.Option("q_proj,k_proj,v_proj,o_proj", "--targets",
                                help="Adapter target projections, or 'all'."),
    adapter_dir: Path = typer.Option(BenchOptions.adapter_dir, "--adapter-dir",
                                     help="Cache folder of the generated adapters."),
    poisson_rate: float | None = typer.Option(
        None, "--poisson-rate", min=0.001,
        help="Open-loop arrivals per second (default: 70% of lora16's throughput)."),
    load_adapters: int = typer.Option(20, "--load-adapters", min=1,
                                      help="Adapters timed by the load scenario."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads."),
    device: str = typer.Option("cpu", "--device", help="Device of the base model."),
    precision: str = typer.Option(
        "auto", "--precision",
        help="auto (bf16 where the CPU has native bf16, else fp32), bf16, fp32, or several "
        "comma-separated (e.g. fp32,bf16: every scenario in each, one run)."),
    json_out: Path | None = typer.Option(None, "--json", help="Save raw results here."),
    markdown: Path | None = typer.Option(None, "--markdown", help="Save the tables here."),
    http: str | None = typer.Option(None, "--http",
                                    help="Benchmark an OpenAI-compatible server at this URL."),
    model: str | None = typer.Option(None, "--model",
                                     help="With --http: model name(s), comma-separated."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY",
                                       help="With --http: bearer token."),
) -> None:
    """Measure output tokens/s and latency of the engine (base, 1-64 adapters, Poisson
    arrivals), of naive and batched PEFT serving, and adapter load latency, in one run."""
    opts = BenchOptions(
        base_model=base_model, scenarios=parse_scenarios(scenarios), requests=requests,
        concurrency=concurrency, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
        naive_requests=naive_requests, max_batch_size=max_batch_size, rank=rank, alpha=alpha,
        targets=targets, adapter_dir=adapter_dir, poisson_rate=poisson_rate,
        load_adapters=load_adapters, threads=threads, device=device,
    )
    if http is not None:
        if not model:
            raise typer.BadParameter("--http needs --model NAME[,NAME...]")
        models = [m.strip() for m in model.split(",") if m.strip()]
        outcomes = [BenchOutcome("server's", [run_http_mode(opts, http, models, api_key)])]
    else:
        outcomes = [run_benchmark(opts, choice.value) for choice in choose_precisions(precision)]
    reasons = [] if http is not None else [c.reason for c in choose_precisions(precision)]
    text = render_report(opts, outcomes, http, reasons)
    typer.echo(text)
    meta: dict[str, Any] = {
        **{k: str(v) for k, v in asdict(opts).items()},
        "command": " ".join(sys.argv), "python": platform.python_version(),
        "machine": platform.machine(), "cpu": CpuFeatures.detect().describe(),
        "http": http, "model": model,
    }
    if markdown is not None:
        markdown.write_text(f"`{meta['command']}`\n\n{text}\n", encoding="utf-8")
    if json_out is not None:
        from loraswap.bench.report import write_json

        for outcome in outcomes:
            path = json_out if len(outcomes) == 1 else json_out.with_suffix(
                f".{outcome.precision}{json_out.suffix}")
            write_json(path, outcome.results, outcome.load,
                       {**meta, "precision": outcome.precision,
                        "gemm_peak_gflops": outcome.peak_gflops})


def train_step(
    base_model: Path = typer.Option(DEFAULT_BASE_MODEL_DIR, "--base-model",
                                    help="Base model folder (safetensors + tokenizer)."),
    precision: str = typer.Option("fp32,bf16", "--precision",
                                  help="Comma-separated: auto, bf16, fp32."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Prompts per step."),
    tokens: int = typer.Option(32, "--tokens", min=1, help="Tokens per prompt."),
) -> None:
    """Time one `loraswap train` step (seq-cls, LoRA on the default targets) per precision."""
    import torch

    from loraswap.bench.train_step import time_train_step

    torch.set_num_threads(threads)
    choices = choose_precisions(precision)
    lines = [f"CPU: {CpuFeatures.detect().describe()}; torch threads {threads}; seq-cls, "
             f"batch {batch_size} x {tokens} tokens, best and median of 3 steps.",
             "", "| precision | why | step best (s) | step median (s) |", "|---|---|---:|---:|"]
    for choice in choices:
        _log(f"train step in {choice.value}")
        result = time_train_step(base_model, choice.value, batch_size=batch_size,
                                 tokens=tokens)
        lines.append(f"| {result.precision} | {choice.reason} | {result.best_s:.2f} "
                     f"| {result.median_s:.2f} |")
    typer.echo("\n".join(lines))


def choose_precisions(spec: str) -> list[PrecisionChoice]:
    """``--precision``: each comma-separated value resolved for this CPU, in order."""
    cpu = CpuFeatures.detect()
    choices = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part not in ("auto", "bf16", "fp32"):
            raise typer.BadParameter(f"unknown precision {part!r}; choose auto, bf16 or fp32")
        choices.append(choose_cpu_precision(part, cpu, source="--precision"))
    if not choices:
        raise typer.BadParameter("--precision needs at least one value")
    return choices


def bench_app() -> typer.Typer:
    """``loraswap bench``: every benchmark of the project, one subcommand each."""
    from loraswap.bench.drift_calibration import main as drift_calibration
    from loraswap.bench.drift_overhead import main as drift
    from loraswap.bench.drift_separation import main as drift_separation
    from loraswap.bench.quality import main as quality
    from loraswap.bench.quantization import quantization

    app = typer.Typer(help="Measure throughput, latency, precision and quality "
                      "(see docs/benchmarks.md).", no_args_is_help=True)
    app.command(name="engine", help="Engine vs PEFT serving: tok/s, latency, adapter loads, "
                "decode against the GEMM peak (one run).")(bench)
    app.command(name="train-step", help="One `loraswap train` step per precision.")(train_step)
    app.command(name="quantization", help="Base model quantizations: memory, latency, "
                "answers.")(quantization)
    app.command(name="quality", help="Quality runs on real data (docs/quality.md).")(quality)
    app.command(name="drift", help="Drift monitoring on vs off over HTTP, side by side "
                "(docs/drift.md).")(drift)
    app.command(name="drift-separation", help="Drift scores of in-distribution traffic vs "
                "other datasets, through a real server (docs/drift.md).")(drift_separation)
    app.command(name="drift-calibration", help="False-alarm rate of the drift alarm levels "
                "on held-out data and detection rate on other datasets, resampled windows "
                "without a server (docs/drift.md).")(drift_calibration)
    return app


if __name__ == "__main__":
    typer.run(bench)
