# ruff: noqa: E402 - stay_offline() runs before the imports that read its switches
"""The GPU check's engine bench: decode step time against the bandwidth floor, and memory.

``scripts/gpu-check.sh`` runs ``pytest -m gpu`` and then this module::

    python -m loraswap.bench.gpu_check --out DIR [--device cuda|cpu] [--small]

For a SmolLM2-135M-shaped and a Llama-3-8B-shaped base (random weights built on the device,
or SmolLM2's real weights with ``--smollm2 DIR``), in bf16 and NF4, with 0 (the base), 16
and 64 resident adapters (rank 16, all seven projections), at batch 1 and 32, it measures
the decode step (:mod:`loraswap.bench.device_decode`) against ``(weight + LoRA + KV bytes
read per step) / bandwidth`` of a device-to-device copy in the same run, and compares the
memory the service reports (``/readyz``: the model's footprint, the slot table, the KV
pool) with ``torch.cuda.memory_allocated``. It writes ``gpu-check.json`` and
``gpu-check.md`` to ``--out``. ``--small`` uses two-layer shapes of the same families, so
the whole path runs on a CPU in seconds (the CI test does).

Only torch, transformers and the engine are imported (argparse, no CLI framework), and
bitsandbytes only when NF4 is measured: the GPU machine has nothing else installed.
"""

from __future__ import annotations

# Offline before torch, transformers and bitsandbytes read their switches (loraswap.offline).
from loraswap.offline import stay_offline

stay_offline()

import argparse
import gc
import json
import logging
import platform
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from loraswap.base_model.loading import Quantization, load_base_model, resolve_device
from loraswap.bench.device_decode import (
    DecodeRun,
    DecodeSizes,
    StepKinds,
    copy_bandwidth,
    make_engine,
    measure_decode,
    preload,
    random_adapters,
)
from loraswap.bench.synthetic_base import (
    SHAPES,
    BaseShape,
    build_random_base,
    quantize_nf4,
    weight_bytes_per_step,
    word_tokenizer,
)

logger = logging.getLogger("loraswap.gpu_check")

FULL_SHAPES = ("smollm2-135m", "llama3-8b")
SMALL_SHAPES = ("smollm2-tiny", "llama3-tiny")
FULL_SIZES = DecodeSizes(prompt_tokens=128, warm_steps=5, steps=30)
SMALL_SIZES = DecodeSizes(prompt_tokens=16, warm_steps=2, steps=4)
COPY_BYTES = {True: 64 << 20, False: 1 << 30}  # small, full


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m loraswap.bench.gpu_check")
    parser.add_argument("--out", type=Path, required=True, help="folder for the report")
    parser.add_argument("--device", default=None, help="cuda[:N] or cpu (default: cuda if present)")
    parser.add_argument("--small", action="store_true", help="two-layer shapes (CPU-sized)")
    parser.add_argument("--smollm2", type=Path, default=None,
                        help="a SmolLM2-135M folder: its real weights instead of random ones")
    parser.add_argument("--precisions", default="bf16,nf4")
    parser.add_argument("--adapters", default="0,16,64")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--pytest-junit", type=Path, default=None,
                        help="the junit XML of the `pytest -m gpu` run, folded into the report")
    parser.add_argument("--pytest-exit", type=int, default=None)
    return parser.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _models(shape: BaseShape, precisions: list[str], device: torch.device,
            smollm2: Path | None) -> Iterator[tuple[str, str, Any, Any, int]]:
    """(precision, weights source, model, tokenizer, footprint the service reports) for each
    precision; the random bf16 model is quantized in place for NF4."""
    real = smollm2 if shape.name == "smollm2-135m" else None
    model: Any = None
    for precision in precisions:
        if real is not None:
            model = None
            _free(device)
            loaded = load_base_model(real, Quantization(precision), str(device))
            model, tokenizer, source = loaded.model, loaded.tokenizer, f"real weights ({real})"
        else:
            if model is None:
                model = build_random_base(shape, device)
            if precision == "nf4":
                quantize_nf4(model)
            elif precision != "bf16":
                raise ValueError(f"precision {precision!r}: choose bf16 or nf4")
            tokenizer, source = word_tokenizer(shape.vocab_size), "random weights"
        yield precision, source, model, tokenizer, int(model.get_memory_footprint())


def run_checks(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration; the report as a JSON-ready dict."""
    started = time.perf_counter()
    device = resolve_device(args.device)
    sizes = SMALL_SIZES if args.small else FULL_SIZES
    counts, batches = _ints(args.adapters), _ints(args.batches)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bandwidth = copy_bandwidth(device, COPY_BYTES[bool(args.small)])
    logger.info("device-to-device copy: %.1f GB/s", bandwidth / 1e9)
    runs: list[DecodeRun] = []
    memory: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    for name in SMALL_SHAPES if args.small else FULL_SHAPES:
        shape = SHAPES[name]
        for precision, source, model, tokenizer, footprint in _models(
                shape, precisions, device, args.smollm2):
            weights = weight_bytes_per_step(model)
            models.append({"model": name, "precision": precision, "weights": source,
                           "weight_bytes_per_step": weights, "footprint_bytes": footprint})
            for count in counts:
                kinds = StepKinds()
                engine = make_engine(model, tokenizer, count, sizes, kinds)
                adapters = random_adapters(engine.table, count, sizes.rank)
                preload(engine, adapters)
                memory.append(_memory(engine, footprint, name, precision, count, device))
                for batch in batches:
                    run = measure_decode(engine, kinds, adapters, batch, sizes, bandwidth,
                                         weights, (name, precision))
                    logger.info("%s %s adapters=%d batch=%d: %.2f ms/step, floor %.2f ms",
                                name, precision, count, batch, run.step_ms_median,
                                run.floor_ms)
                    runs.append(run)
                del engine, adapters
                _free(device)
            del model
            _free(device)
    return {
        "device": str(device), "device_name": device_name(device),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "small": bool(args.small), "sizes": asdict(sizes),
        "copy_bandwidth_bytes_per_s": bandwidth, "models": models,
        "runs": [run.as_dict() for run in runs], "memory": memory,
        "pytest": pytest_summary(args.pytest_junit, args.pytest_exit),
        "wall_s": time.perf_counter() - started,
    }


def _memory(engine: Any, footprint: int, name: str, precision: str, count: int,
            device: torch.device) -> dict[str, Any]:
    """What the service reports (model footprint, slot table, KV pool) against what torch
    has allocated on the device (None on a CPU)."""
    stats = engine.stats()
    reported = footprint + int(stats["slot_table_bytes"]) + int(stats["kv_cache_bytes"])
    allocated = (int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None)
    return {"model": name, "precision": precision, "adapters": count,
            "model_footprint_bytes": footprint, "slot_table_bytes": stats["slot_table_bytes"],
            "kv_cache_bytes": stats["kv_cache_bytes"], "kv_blocks": stats["kv_blocks_total"],
            "service_reported_bytes": reported, "torch_allocated_bytes": allocated,
            "unreported_bytes": None if allocated is None else allocated - reported}


def pytest_summary(junit: Path | None, exit_code: int | None) -> dict[str, Any] | None:
    """Counts of the ``pytest -m gpu`` run from its junit XML (None when it did not run)."""
    if junit is None or not junit.is_file():
        return None if exit_code is None else {"exit_code": exit_code}
    root = ET.parse(junit).getroot()  # our own pytest run's output
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) if suite is not None else 0
              for key in ("tests", "failures", "errors", "skipped")}
    return {"exit_code": exit_code, **counts,
            "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]}


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown page."""
    gib = 2**30
    lines = [f"# GPU check: {report['device_name']} ({report['device']})", "",
             f"torch {report['torch']}, CUDA {report['cuda']}; "
             f"device-to-device copy {report['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; "
             f"{'small shapes; ' if report['small'] else ''}{report['wall_s']:.0f} s.", ""]
    if report["pytest"] is not None:
        lines += [f"`pytest -m gpu`: {json.dumps(report['pytest'])}", ""]
    lines += ["| model | precision | adapters | batch | distinct in batch | step ms (median) "
              "| p90 | forward launch ms | floor ms | × floor | tok/s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in report["runs"]:
        lines.append(
            f"| {run['model']} | {run['precision']} | {run['adapters']} | {run['batch']} "
            f"| {run['distinct_in_batch']} | {run['step_ms_median']:.3f} "
            f"| {run['step_ms_p90']:.3f} | {run['forward_launch_ms_median']:.3f} "
            f"| {run['floor_ms']:.3f} | {run['ratio_to_floor']:.2f} "
            f"| {run['tokens_per_s']:.0f} |")
    lines += ["", "| model | precision | adapters | footprint GiB | slot table GiB | KV pool GiB "
              "| reported GiB | torch allocated GiB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for entry in report["memory"]:
        allocated = entry["torch_allocated_bytes"]
        lines.append(
            f"| {entry['model']} | {entry['precision']} | {entry['adapters']} "
            f"| {entry['model_footprint_bytes'] / gib:.3f} "
            f"| {entry['slot_table_bytes'] / gib:.3f} | {entry['kv_cache_bytes'] / gib:.3f} "
            f"| {entry['service_reported_bytes'] / gib:.3f} "
            f"| {'n/a' if allocated is None else f'{allocated / gib:.3f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the checks and write ``gpu-check.json`` and ``gpu-check.md`` to ``--out``."""
    logging.basicConfig(level=logging.INFO, format="[gpu-check] %(message)s")
    args = parse_args(argv)
    report = run_checks(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu-check.md").write_text(markdown(report))
    logger.info("report written to %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
