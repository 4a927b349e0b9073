"""``loraswap bench``: the project's benchmarks as subcommands (``engine``, ``train-step``,
``quantization``, ``quality``, ``drift``, ``drift-separation``, ``drift-calibration``,
``loop``); ``engine`` measures the
engine against PEFT serving in one run.

``engine`` is also runnable without the main CLI as ``python -m loraswap.bench_cmd [OPTIONS]``.
This module is the command line only: options, precision choice, report files; the engine
benchmark's scenarios run in :mod:`loraswap.bench.engine_suite`.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from loraswap.base_model.loading import DEFAULT_BASE_MODEL_DIR
from loraswap.base_model.precision import CpuFeatures, PrecisionChoice, choose_cpu_precision
from loraswap.bench.engine_suite import (
    ALL_SCENARIOS,
    DEFAULT_SCENARIOS,
    log,
    run_benchmark,
    run_http_mode,
)
from loraswap.bench.outcome import BenchOptions, BenchOutcome, render_report


def parse_scenarios(spec: str) -> tuple[str, ...]:
    """Comma-separated scenario names, validated, in the canonical order."""
    names = {part.strip() for part in spec.split(",") if part.strip()}
    unknown = names - set(ALL_SCENARIOS)
    if unknown or not names:
        raise typer.BadParameter(
            f"unknown scenarios {sorted(unknown)}; choose from {DEFAULT_SCENARIOS}"
        )
    return tuple(s for s in ALL_SCENARIOS if s in names)


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
             "", "| precision | why | step best (ms) | step median (ms) |", "|---|---|---:|---:|"]
    for choice in choices:
        log(f"train step in {choice.value}")
        result = time_train_step(base_model, choice.value, batch_size=batch_size,
                                 tokens=tokens)
        # Milliseconds with three decimals: a tiny test model's step is well under 5 ms,
        # which two-decimal seconds printed as 0.00.
        lines.append(f"| {result.precision} | {choice.reason} | {1000 * result.best_s:.3f} "
                     f"| {1000 * result.median_s:.3f} |")
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
    from loraswap.bench.loop_cmd import main as loop
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
    app.command(name="loop", help="The drift loop on real data: train on one dataset, "
                "serve with drift on, send another with feedback, the alert retrains, both "
                "versions judged on held-out data of both (docs/drift.md).")(loop)
    return app


if __name__ == "__main__":
    from loraswap.offline import stay_offline

    stay_offline()
    typer.run(bench)
