"""What one ``loraswap bench engine`` run is given and what it found, and its report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswap.base_model.precision import CpuFeatures


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
    # Per user: a fixed folder in the shared temporary directory fails for the second user.
    adapter_dir: Path = Path.home() / ".cache" / "loraswap" / "bench-adapters"
    poisson_rate: float | None = None
    load_adapters: int = 20
    threads: int = 2
    device: str = "cpu"


@dataclass
class BenchOutcome:
    """The scenarios measured in one precision, with the run's GEMM peak."""

    precision: str
    results: list[Any]
    load: Any = None  # LoadLatencyResult
    peak_gflops: float = 0.0
    flops_per_token: float = 0.0

    def rooflines(self) -> list[Any]:
        """Achieved decode GFLOP/s of each engine scenario against the peak."""
        from loraswap.bench.roofline import Roofline

        return [Roofline(r.scenario, self.flops_per_token * r.decode_tokens
                         / r.decode_seconds / 1e9, self.peak_gflops)
                for r in self.results if r.decode_seconds > 0 and self.peak_gflops > 0]


def setup_line(opts: BenchOptions, http: str | None) -> str:
    where = "over HTTP" if http else f"on {opts.device}"
    return (
        f"Workload: {opts.base_model.name} ({where}, torch threads {opts.threads}), prompts "
        f"of {opts.prompt_tokens} tokens, {opts.max_tokens} output tokens each (ignore_eos, "
        f"greedy), {opts.concurrency} concurrent clients; adapters r={opts.rank}, "
        f"alpha={opts.alpha:g}, targets {opts.targets}. CPU: {CpuFeatures.detect().describe()}."
    )


def outcome_section(outcome: BenchOutcome, http: str | None) -> str:
    from loraswap.bench.report import load_table, scenario_table

    results = outcome.results
    lines = [f"### {outcome.precision}"]
    loads = ", ".join(f"{r.scenario} {r.host_load:.1f}" for r in results
                      if r.host_load is not None)
    if loads:
        lines.append(f"Host load average (1 min) at the end of each scenario: {loads}.")
    lines.append(scenario_table(results, baseline="base" if http is None else "http"))
    rooflines = outcome.rooflines()
    if rooflines:
        lines.append("\n".join(f"- {line.describe()}" for line in rooflines))
    if outcome.load is not None:
        lines.append(load_table(outcome.load))
    return "\n\n".join(lines)


def render_report(opts: BenchOptions, outcomes: list[BenchOutcome], http: str | None,
                  reasons: list[str]) -> str:
    """The header (workload, CPU, precision and why) and one section per precision."""
    parts = [setup_line(opts, http)]
    if http is None:
        parts.append(f"Precision: {'; '.join(reasons)}.")
    parts += [outcome_section(outcome, http) for outcome in outcomes]
    return "\n\n".join(parts)
