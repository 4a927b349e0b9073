"""Figures of ``loraswap bench drift``: latency and throughput per arm, ratios against off.

Pure functions over the measured round trips, so the arithmetic is tested without servers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass
class ArmRounds:
    """What one arm measured: every request's latency and each round's wall time."""

    name: str
    latencies: list[float] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)
    round_p50s: list[float] = field(default_factory=list)
    round_rps: list[float] = field(default_factory=list)

    def add_round(self, latencies: list[float], seconds: float) -> None:
        """Record one round (its requests' latencies, in seconds, and its wall time)."""
        self.latencies.extend(latencies)
        self.round_seconds.append(seconds)
        self.round_p50s.append(statistics.median(latencies))
        self.round_rps.append(len(latencies) / seconds)


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
    # Throughput against off's in the same round: geometric mean over rounds and its 95 %
    # confidence interval (what machine noise leaves undecided).
    paired_rps_ratio: float
    paired_rps_low: float
    paired_rps_high: float


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
        ratio, low, high = paired_ratio(arm.round_rps, base.round_rps)
        out.append(ArmSummary(arm.name, len(arm.latencies), round(1000 * p50, 1),
                              round(1000 * p99, 1), round(rps, 3), round(p50 / base_p50, 4),
                              round(p99 / base_p99, 4), round(rps / base_rps, 4),
                              round(paired, 4), round(ratio, 4), round(low, 4),
                              round(high, 4)))
    return out


def paired_ratio(mine: list[float], theirs: list[float]) -> tuple[float, float, float]:
    """Geometric mean of ``mine[i] / theirs[i]`` and its 95 % confidence interval (Student's
    t on the log ratios; the interval is the point itself with a single round)."""
    logs = [math.log(a / b) for a, b in zip(mine, theirs, strict=True)]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), math.exp(mean), math.exp(mean)
    half = t_quantile(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def t_quantile(freedom: int) -> float:
    """Student's t 0.975 quantile (Cornish-Fisher expansion: within 1 % from 5 degrees of
    freedom, 4 % at 3)."""
    z = statistics.NormalDist().inv_cdf(0.975)
    return (z + (z**3 + z) / (4 * freedom)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * freedom**2))


def markdown_table(summaries: list[ArmSummary]) -> str:
    """The figures as the Markdown table docs/drift.md records."""
    lines = ["| arm | requests | p50 ms | p99 ms | req/s | p50 vs off | p99 vs off "
             "| req/s vs off | per round: p50 vs off (median) | per round: req/s vs off "
             "(95 % CI) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(f"| {s.name} | {s.requests} | {s.p50_ms:,.1f} | {s.p99_ms:,.1f} "
                     f"| {s.throughput_rps:.2f} | {signed(s.p50_ratio)} | {signed(s.p99_ratio)} "
                     f"| {signed(s.throughput_ratio)} | {signed(s.paired_p50_ratio)} "
                     f"| {signed(s.paired_rps_ratio)} ({signed(s.paired_rps_low)} .. "
                     f"{signed(s.paired_rps_high)}) |")
    return "\n".join(lines)


def signed(ratio: float) -> str:
    """A ratio as a signed percentage change (1.027 -> ``+2.7 %``)."""
    return f"{100 * (ratio - 1):+.1f} %"
