"""``loraswap bench``: throughput and latency of the engine against PEFT serving, one run.

Runnable without the main CLI as ``python -m loraswap.bench_cmd [OPTIONS]``.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from adapters.base_model import DEFAULT_BASE_MODEL_DIR

ENGINE_SCENARIOS: dict[str, int] = {"base": 0, "lora1": 1, "lora4": 4, "lora16": 16, "lora64": 64}
ALL_SCENARIOS = (*ENGINE_SCENARIOS, "naive", "peft-mixed", "poisson", "load")
DEFAULT_SCENARIOS = ",".join(ALL_SCENARIOS)
PEFT_ADAPTERS = 16
POISSON_ADAPTERS = 16
POISSON_LOAD = 0.7


@dataclass(frozen=True)
class BenchOptions:
    """Everything one benchmark run depends on."""

    base_model: Path
    scenarios: tuple[str, ...]
    requests: int = 32
    concurrency: int = 32
    prompt_tokens: int = 32
    max_tokens: int = 64
    naive_requests: int | None = None
    max_batch_size: int = 32
    rank: int = 16
    alpha: float = 32.0
    targets: str = "q_proj,k_proj,v_proj,o_proj"
    adapter_dir: Path = Path(tempfile.gettempdir()) / "loraswap-bench-adapters"
    poisson_rate: float | None = None
    load_adapters: int = 20
    threads: int = 2
    device: str = "cpu"


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


def run_benchmark(opts: BenchOptions) -> tuple[list[Any], Any]:
    """Run the selected in-process scenarios; returns (scenario results, load result)."""

    from loraswap.bench.engine_bench import (
        EngineRun,
        measure_load_latency,
        read_adapters,
        run_engine_scenario,
    )
    from loraswap.bench.peft_baselines import build_peft_model, run_naive_server, run_peft_mixed
    from loraswap.bench.report import LoadLatencyResult, ScenarioResult
    from loraswap.bench.workload import (
        AdapterSpec,
        build_prompts,
        ensure_adapters,
        load_base,
        parse_targets,
    )
    from service.engine.engine_thread import EngineThread

    # All torch work on one thread, as in the service (a second thread running torch ops
    # slows the first one down measurably on this CPU).
    torch_thread = EngineThread(opts.threads, name="bench-torch")
    torch_thread.start()

    def on_thread(fn: Any) -> Any:
        return torch_thread.call(fn).result()

    spec = AdapterSpec(rank=opts.rank, alpha=opts.alpha, targets=parse_targets(opts.targets))
    selected = set(opts.scenarios)
    needed = [ENGINE_SCENARIOS[s] for s in selected if s in ENGINE_SCENARIOS]
    if selected & {"naive", "peft-mixed"}:
        needed.append(PEFT_ADAPTERS)
    if "poisson" in selected:
        needed.append(POISSON_ADAPTERS)
    if "load" in selected:
        needed.append(opts.load_adapters)
    started = time.perf_counter()
    folders = ensure_adapters(opts.adapter_dir, opts.base_model, max(needed, default=0), spec)
    _log(f"{len(folders)} adapters ({spec.tag}) ready in {opts.adapter_dir} "
         f"({time.perf_counter() - started:.1f}s)")
    model, tokenizer = on_thread(lambda: load_base(opts.base_model, opts.device))
    prompts = build_prompts(tokenizer, opts.requests, opts.prompt_tokens)
    run = EngineRun(
        max_new_tokens=opts.max_tokens, concurrency=opts.concurrency,
        max_batch_size=opts.max_batch_size, max_lora_rank=opts.rank,
        max_model_len=max(64, opts.prompt_tokens + opts.max_tokens + 8),
    )
    engine_counts = [ENGINE_SCENARIOS[s] for s in opts.scenarios if s in ENGINE_SCENARIOS]
    decoded = on_thread(lambda: read_adapters(folders[:max([*engine_counts, POISSON_ADAPTERS])]))
    results: list[ScenarioResult] = []
    for name in opts.scenarios:
        if name in ENGINE_SCENARIOS:
            _log(f"{name}: {len(prompts)} requests x {opts.max_tokens} tokens")
            _record(results, run_engine_scenario(
                name, model, tokenizer, prompts, decoded[:ENGINE_SCENARIOS[name]], run,
                thread=torch_thread,
            ))
    if "poisson" in selected:
        rate = opts.poisson_rate
        if rate is None:
            reference = next((r for r in results if r.scenario == "lora16"), None)
            if reference is None:
                _log("poisson: measuring lora16 first to pick the arrival rate")
                reference = run_engine_scenario("lora16", model, tokenizer, prompts,
                                                decoded[:16], run, thread=torch_thread)
                _record(results, reference)
            rate = POISSON_LOAD * reference.tokens_per_s / opts.max_tokens
        _log(f"poisson: {len(prompts)} requests at {rate:.2f} req/s")
        _record(results, run_engine_scenario("poisson", model, tokenizer, prompts,
                                           decoded[:POISSON_ADAPTERS], run, poisson_rate=rate,
                                           thread=torch_thread))
    load: LoadLatencyResult | None = None
    if "load" in selected:
        _log(f"load: {opts.load_adapters} adapters disk -> slot")
        load = on_thread(lambda: measure_load_latency(model, tokenizer,
                                                      folders[:opts.load_adapters], run))
    if selected & {"naive", "peft-mixed"}:
        del model
        peft_base, _ = on_thread(lambda: load_base(opts.base_model, opts.device))
        peft_model, names = on_thread(lambda: build_peft_model(peft_base,
                                                               folders[:PEFT_ADAPTERS]))
        if "naive" in selected:
            naive_prompts = prompts[:opts.naive_requests or len(prompts)]
            _log(f"naive: {len(naive_prompts)} requests, one at a time")
            _record(results, run_naive_server(peft_model, names, tokenizer, naive_prompts,
                                            opts.max_tokens, opts.concurrency,
                                            submit=torch_thread.call))
        if "peft-mixed" in selected:
            _log(f"peft-mixed: {len(prompts)} requests in batches of {opts.max_batch_size}")
            _record(results, on_thread(lambda: run_peft_mixed(
                peft_model, names, tokenizer, prompts, opts.max_tokens, opts.max_batch_size)))
    torch_thread.stop()
    order = {name: i for i, name in enumerate(ALL_SCENARIOS)}
    results.sort(key=lambda r: order.get(r.scenario, len(order)))
    return results, load


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
    from loraswap.bench.report import load_table as render_load
    from loraswap.bench.report import scenario_table, write_json

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
        results, load = [run_http_mode(opts, http, models, api_key)], None
    else:
        results, load = run_benchmark(opts)
    setup = (
        f"Workload: {opts.base_model.name} ({'over HTTP' if http else 'bf16 on ' + device}, "
        f"torch threads {threads}), prompts of {prompt_tokens} tokens, {max_tokens} output "
        f"tokens each (ignore_eos, greedy), {concurrency} concurrent clients; adapters "
        f"r={rank}, alpha={alpha:g}, targets {targets}."
    )
    loads = ", ".join(f"{r.scenario} {r.host_load:.1f}" for r in results
                      if r.host_load is not None)
    if loads:
        setup += f" Host load average (1 min) at the end of each scenario: {loads}."
    parts = [setup, scenario_table(results, baseline="base" if http is None else "http")]
    if load is not None:
        parts.append(render_load(load))
    text = "\n\n".join(parts)
    typer.echo(text)
    meta: dict[str, Any] = {
        **{k: str(v) for k, v in asdict(opts).items()},
        "command": " ".join(sys.argv), "python": platform.python_version(),
        "machine": platform.machine(), "http": http, "model": model,
    }
    if markdown is not None:
        markdown.write_text(f"`{meta['command']}`\n\n{text}\n", encoding="utf-8")
    if json_out is not None:
        write_json(json_out, results, load, meta)


if __name__ == "__main__":
    typer.run(bench)
