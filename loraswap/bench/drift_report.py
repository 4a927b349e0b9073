"""Figures of ``loraswap bench drift``: latency and throughput per arm, ratios against off.

Pure functions over the measured round trips, so the arithmetic is tested without servers.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class ArmRounds:
    """What one arm measured: every request's latency and each round's wall time."""

    name: str
    latencies: list[float] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)
    round_p50s: list[float] = field(default_factory=list)

    def add_round(self, latencies: list[float], seconds: float) -> None:
        """Record one round (its requests' latencies, in seconds, and its wall time)."""
        self.latencies.extend(latencies)
        self.round_seconds.append(seconds)
        self.round_p50s.append(statistics.median(latencies))


@dataclass(frozen=True)
class ArmSummary:
    """One arm's figures, and its ratios against the drift-off arm of the same run."""

    name: str
    requests: int
    p50_ms: float
    p99_ms: float
    throughput_rps: float
    p50_ratio: float
    p99_ratio: float
    throughput_ratio: float
    paired_p50_ratio: float  # median over rounds of (this arm's p50 / off's p50)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in [0, 1]) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def round_order(arms: list[str], index: int) -> list[str]:
    """The arms of round ``index``, rotated by one each round: every arm runs first,
    second and last equally often, so a load change during a round hits each alike."""
    shift = index % len(arms)
    return arms[shift:] + arms[:shift]


def summarize(arms: list[ArmRounds], baseline: str = "off") -> list[ArmSummary]:
    """Per-arm p50/p99/throughput and the ratios against ``baseline`` (in ``arms``)."""
    base = next(a for a in arms if a.name == baseline)
    base_p50 = statistics.median(base.latencies)
    base_p99 = percentile(base.latencies, 0.99)
    base_rps = len(base.latencies) / sum(base.round_seconds)
    out = []
    for arm in arms:
        p50 = statistics.median(arm.latencies)
        p99 = percentile(arm.latencies, 0.99)
        rps = len(arm.latencies) / sum(arm.round_seconds)
        paired = statistics.median(mine / theirs for mine, theirs in
                                   zip(arm.round_p50s, base.round_p50s, strict=True))
        out.append(ArmSummary(arm.name, len(arm.latencies), round(1000 * p50, 1),
                              round(1000 * p99, 1), round(rps, 3), round(p50 / base_p50, 4),
                              round(p99 / base_p99, 4), round(rps / base_rps, 4),
                              round(paired, 4)))
    return out


def markdown_table(summaries: list[ArmSummary]) -> str:
    """The figures as the Markdown table docs/drift.md records."""
    lines = ["| arm | requests | p50 ms | p99 ms | req/s | p50 vs off | p99 vs off "
             "| req/s vs off | p50 vs off, median of rounds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(f"| {s.name} | {s.requests} | {s.p50_ms:,.1f} | {s.p99_ms:,.1f} "
                     f"| {s.throughput_rps:.2f} | {signed(s.p50_ratio)} | {signed(s.p99_ratio)} "
                     f"| {signed(s.throughput_ratio)} | {signed(s.paired_p50_ratio)} |")
    return "\n".join(lines)


def signed(ratio: float) -> str:
    """A ratio as a signed percentage change (1.027 -> ``+2.7 %``)."""
    return f"{100 * (ratio - 1):+.1f} %"
