"""Compare the base model's quantizations on this CPU: memory, load time, latency, answers.

Each quantization is measured in a fresh subprocess (one after the other, never in
parallel), so the resident-memory figure is that of one loaded model and nothing else.
The model must have been fetched first (``loraswap model fetch``).

Usage: ``loraswap bench quantization [--model DIR] [--threads N] [--modes ...] [--out FILE]``
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from loraswap.base_model.loading import DEFAULT_BASE_MODEL_DIR

MODES = ("fp32", "bf16", "int8", "nf4")
PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
)
LATENCY_TOKENS = 64
LATENCY_REPEATS = 3
ANSWER_TOKENS = 40
RESULT_MARK = "RESULT_JSON:"


def _memory() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process in bytes, from /proc (Linux)."""
    wanted = {"VmRSS", "RssAnon", "RssFile"}
    found: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            found[key] = int(value.split()[0]) * 1024
    return found


def _trim_heap() -> None:
    """Give freed heap back to the OS so that RSS shows what is still in use."""
    gc.collect()
    # Not glibc: no malloc_trim, and RSS then includes freed heap.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _worker(mode: str, model_dir: Path, threads: int) -> dict[str, Any]:
    """Load one quantization and measure it (runs in its own process)."""
    import torch

    torch.set_num_threads(threads)
    # Import what loading imports first, so that the baseline holds the libraries and the
    # difference is the model. bitsandbytes only where it would be used.
    import transformers  # noqa: F401

    from loraswap.base_model.loading import Quantization, load_base_model

    if mode in ("int8", "nf4"):
        import bitsandbytes  # noqa: F401
    base = _memory()
    loaded = load_base_model(model_dir, Quantization(mode), "cpu")
    after_load = _memory()
    model, tokenizer = loaded.model, loaded.tokenizer

    # Measured through the service's own engine (what `loraswap serve` runs), one request
    # at a time, so the figures are what a lone client sees.
    import asyncio

    from loraswap.service.engine.engine import EngineConfig, LoraEngine
    from loraswap.service.engine.observer import NullObserver
    from loraswap.service.engine.requests import GenerationRequest
    from loraswap.service.engine.sampling import SamplingParams

    engine = LoraEngine(model, tokenizer, EngineConfig(max_loras=1, max_batch_size=1,
                                                       max_model_len=512), NullObserver())

    def encode(question: str) -> list[int]:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])

    async def generate(prompt: list[int], new_tokens: int, exact: bool) -> tuple[str, int]:
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=exact)
        result = await engine.submit(GenerationRequest("q", prompt, params)).collect()
        return result.text, result.completion_tokens

    async def measure() -> tuple[list[float], list[str]]:
        prompt = encode(PROMPTS[0])
        await generate(prompt, 4, exact=True)  # warm-up: first-call setup is not latency
        # The machine may be shared: repeat, report the best (least disturbed) and median.
        latencies = []
        for _ in range(LATENCY_REPEATS):
            started = time.perf_counter()
            _, produced = await generate(prompt, LATENCY_TOKENS, exact=True)
            latencies.append(time.perf_counter() - started)
            if produced != LATENCY_TOKENS:
                raise RuntimeError(f"expected {LATENCY_TOKENS} new tokens, got {produced}")
        answers = [(await generate(encode(q), ANSWER_TOKENS, exact=False))[0].strip()
                   for q in PROMPTS]
        return latencies, answers

    engine.start()
    try:
        latencies, answers = asyncio.run(measure())
    finally:
        engine.stop()

    _trim_heap()
    steady = _memory()
    info = loaded.info.as_dict()
    return {
        "mode": mode,
        "weight_format": info["weight_format"],
        "compute_dtype": info["compute_dtype"],
        "load_seconds": info["load_seconds"],
        "memory_bytes": info["memory_bytes"],
        "rss_base": base["VmRSS"],
        "rss_loaded": after_load["VmRSS"],
        "rss_steady": steady["VmRSS"],
        "rss_steady_file": steady.get("RssFile", 0),
        "latency_best": min(latencies),
        "latency_median": statistics.median(latencies),
        "answers": answers,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _run_mode(mode: str, model_dir: Path, threads: int) -> dict[str, Any]:
    """Measure one mode in a fresh interpreter; its result comes back as a JSON line."""
    command = [
        sys.executable,
        "-m",
        "loraswap.cli",
        "bench",
        "quantization",
        "--worker",
        mode,
        "--model",
        str(model_dir),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line.removeprefix(RESULT_MARK))
            return result
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return {"mode": mode, "error": " | ".join(tail) or f"exit code {done.returncode}"}


def _loadavg(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _mib(value: float) -> str:
    return f"{value / 2**20:.0f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: list[dict[str, Any]], model_dir: Path, threads: int, load: str) -> str:
    """Markdown tables of the measurements and the answers."""
    lines = [
        f"## Base model quantization on CPU ({model_dir.name}, {threads} threads)",
        "",
        "| mode | weights (as loaded) | compute | load s | RSS base MiB | RSS loaded MiB "
        "| RSS steady MiB (file-backed) | footprint MiB "
        f"| {LATENCY_TOKENS} tok best s | median s | ms/token (best) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['mode']} | failed: {_cell(r['error'])} |" + " |" * 9)
            continue
        lines.append(
            f"| {r['mode']} | {_cell(r['weight_format'])} | {r['compute_dtype']} "
            f"| {r['load_seconds']:.1f} | {_mib(r['rss_base'])} | {_mib(r['rss_loaded'])} "
            f"| {_mib(r['rss_steady'])} ({_mib(r['rss_steady_file'])}) "
            f"| {_mib(r['memory_bytes'])} | {r['latency_best']:.2f} "
            f"| {r['latency_median']:.2f} | {1000 * r['latency_best'] / LATENCY_TOKENS:.0f} |"
        )
    lines += [
        "",
        f"Greedy answers (at most {ANSWER_TOKENS} new tokens):",
        "",
        "| mode | " + " | ".join(PROMPTS) + " |",
        "|---|" + "---|" * len(PROMPTS),
    ]
    for r in results:
        if "answers" in r:
            lines.append(f"| {r['mode']} | " + " | ".join(_cell(a) for a in r["answers"]) + " |")
    lines += [
        "",
        "Each mode ran in a fresh process. RSS base: after importing torch, transformers (and "
        "bitsandbytes for int8/nf4), before loading. RSS loaded: right after "
        "`load_base_model`. RSS steady: after all requests, gc and `malloc_trim`; in brackets "
        "the file-backed part (mapped safetensors and libraries, reclaimable by the kernel). "
        "Footprint: `model.get_memory_footprint()`. Latency: through the loraswap engine, one "
        "request at a time, greedy, "
        f"exactly {LATENCY_TOKENS} new tokens, after a 4-token warm-up, "
        f"{LATENCY_REPEATS} runs. Load average (1/5/15 min) {load}.",
    ]
    return "\n".join(lines) + "\n"


def quantization(
    model: Path = typer.Option(DEFAULT_BASE_MODEL_DIR, "--model", help="Model folder."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch threads."),
    modes: str = typer.Option(",".join(MODES), "--modes", help="Comma-separated modes."),
    out: Path | None = typer.Option(None, "--out", help="Also write the table here."),
    worker: str | None = typer.Option(None, "--worker", hidden=True),
) -> None:
    """Compare the base model's quantizations on this CPU: memory, load time, latency,
    answers (each mode in a fresh process, one after the other)."""
    if worker:
        typer.echo(RESULT_MARK + json.dumps(_worker(worker, model, threads)))
        return
    load_before = os.getloadavg()
    results = []
    for mode in modes.split(","):
        typer.echo(f"measuring {mode} ...", err=True)
        results.append(_run_mode(mode, model, threads))
    load_after = os.getloadavg()
    load = f"{_loadavg(load_before)} before, {_loadavg(load_after)} after"
    table = render(results, model, threads, load)
    typer.echo(table)
    if out:
        out.write_text(table)
