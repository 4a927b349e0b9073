"""Results of benchmark scenarios and their markdown / JSON renderings."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BASELINE = "base"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class RequestTiming:
    """One request as its client saw it: seconds from submission to first token and to end."""

    ttft_s: float
    latency_s: float
    output_tokens: int


async def closed_loop_clients(count: int, concurrency: int,
                              request: Callable[[int], Awaitable[RequestTiming]],
                              ) -> tuple[list[RequestTiming], float]:
    """Requests ``0..count-1`` sent by ``concurrency`` clients, each sending the next one
    when its last one ends (a closed loop). Returns the timings in request order and the
    wall time."""
    timings: list[RequestTiming | None] = [None] * count
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            timings[index] = await request(index)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(concurrency, count))))
    return [t for t in timings if t is not None], time.perf_counter() - started


@dataclass
class ScenarioResult:
    """Throughput and latency of one scenario."""

    scenario: str
    requests: int
    distinct_adapters: int
    output_tokens: int
    wall_s: float
    latencies_s: list[float] = field(repr=False)
    ttfts_s: list[float] = field(repr=False)
    note: str = ""
    # 1-minute load average of the host when the scenario ended (others' CPU use shows up
    # here: with N cores, a value well above the benchmark's own threads means contention).
    host_load: float | None = None
    # Engine decode steps of the scenario (in-process runs only): time and tokens.
    decode_seconds: float = 0.0
    decode_tokens: int = 0

    @classmethod
    def from_timings(cls, scenario: str, distinct_adapters: int, timings: list[RequestTiming],
                     wall_s: float, note: str = "") -> ScenarioResult:
        """Aggregate per-request timings measured over ``wall_s`` seconds."""
        return cls(
            scenario=scenario, requests=len(timings), distinct_adapters=distinct_adapters,
            output_tokens=sum(t.output_tokens for t in timings), wall_s=wall_s,
            latencies_s=[t.latency_s for t in timings], ttfts_s=[t.ttft_s for t in timings],
            note=note,
        )

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second of wall-clock time."""
        return self.output_tokens / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def mean_ttft_s(self) -> float:
        """Mean time to first token."""
        return sum(self.ttfts_s) / len(self.ttfts_s) if self.ttfts_s else math.nan

    def latency(self, q: float) -> float:
        """The ``q``-th percentile of end-to-end latency."""
        return percentile(self.latencies_s, q)

    def summary(self) -> dict[str, Any]:
        """Aggregates and raw timings, JSON-ready."""
        data = asdict(self)
        data.update(
            tokens_per_s=self.tokens_per_s, mean_ttft_s=self.mean_ttft_s,
            p50_latency_s=self.latency(50), p90_latency_s=self.latency(90),
            p99_latency_s=self.latency(99), p50_ttft_s=percentile(self.ttfts_s, 50),
        )
        return data


@dataclass
class LoadLatencyResult:
    """Adapter load timings: disk -> host (read) and host -> slot (copy), per adapter."""

    rank: int
    targets: tuple[str, ...]
    read_s: list[float]
    copy_s: list[float]

    @property
    def total_s(self) -> list[float]:
        """Read plus copy, per adapter."""
        return [r + c for r, c in zip(self.read_s, self.copy_s, strict=True)]

    def summary(self) -> dict[str, Any]:
        """Percentiles and raw timings, JSON-ready."""
        data = asdict(self)
        for name, values in (("read", self.read_s), ("copy", self.copy_s),
                             ("total", self.total_s)):
            data[f"{name}_p50_s"] = percentile(values, 50)
            data[f"{name}_p90_s"] = percentile(values, 90)
        return data


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def _s(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds:.2f}"


def scenario_table(results: list[ScenarioResult], baseline: str = BASELINE) -> str:
    """Markdown table of the scenarios; the ratio column is relative to ``baseline``."""
    base = next((r for r in results if r.scenario == baseline), None)
    lines = [
        "| scenario | requests | distinct adapters | output tok/s | ratio vs base "
        "| p50 latency (s) | p90 latency (s) | p99 latency (s) | mean TTFT (s) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        ratio = (f"{result.tokens_per_s / base.tokens_per_s:.2f}x"
                 if base is not None and base.tokens_per_s > 0 else "n/a")
        lines.append(
            f"| {result.scenario} | {result.requests} | {result.distinct_adapters} "
            f"| {result.tokens_per_s:.1f} | {ratio} | {_s(result.latency(50))} "
            f"| {_s(result.latency(90))} | {_s(result.latency(99))} "
            f"| {_s(result.mean_ttft_s)} | {result.note} |"
        )
    return "\n".join(lines)


def load_table(result: LoadLatencyResult) -> str:
    """Markdown table of adapter load latency percentiles (milliseconds)."""
    lines = [
        f"Adapter load latency ({len(result.read_s)} adapters, r={result.rank}, "
        f"targets {','.join(result.targets)}), ms:",
        "",
        "| stage | p50 (ms) | p90 (ms) |",
        "|---|---:|---:|",
    ]
    for name, values in (("read (disk -> host, read_lora_adapter)", result.read_s),
                         ("copy (host -> slot, table.load)", result.copy_s),
                         ("total", result.total_s)):
        lines.append(f"| {name} | {_ms(percentile(values, 50))} | {_ms(percentile(values, 90))} |")
    return "\n".join(lines)


def write_json(path: Path, results: list[ScenarioResult], load: LoadLatencyResult | None,
               meta: dict[str, Any]) -> None:
    """Save the raw results (every request's timings) and the run's settings."""
    payload = {
        "meta": meta,
        "scenarios": [r.summary() for r in results],
        "adapter_load": load.summary() if load is not None else None,
    }
    path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
