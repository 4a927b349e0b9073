"""How close decode gets to the machine's matmul peak: both measured in the same run.

Decode FLOPs are counted as ``2 x`` the weights of every matmul of the model (projections
and LM head) per generated token; attention over the cache and the LoRA deltas are left
out, so the achieved figure is a slight underestimate. The peak is the best of a few large
square GEMMs in the dtype the engine runs, on the same torch threads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from loraswap.service.engine.observer import NullObserver, StepKind

PEAK_GEMM_SIZE = 2048
PEAK_REPEATS = 3


class StepTotals(NullObserver):
    """Engine observer summing the time and tokens of decode steps."""

    def __init__(self) -> None:
        self.decode_seconds = 0.0
        self.decode_tokens = 0

    def engine_step(self, kind: StepKind, seconds: float, tokens: int) -> None:
        """Add a decode step to the totals."""
        if kind == "decode":
            self.decode_seconds += seconds
            self.decode_tokens += tokens


def flops_per_token(model: Any) -> float:
    """``2 x`` the matmul weights of ``model`` (every ``nn.Linear``, LM head included)."""
    weights = sum(m.in_features * m.out_features for m in model.modules()
                  if isinstance(m, torch.nn.Linear))
    return 2.0 * weights


def gemm_peak_gflops(dtype: torch.dtype, size: int = PEAK_GEMM_SIZE,
                     repeats: int = PEAK_REPEATS) -> float:
    """Best GFLOP/s of a ``size``-cubed matmul in ``dtype`` on this thread's torch threads."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up: first-call setup is not throughput
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best / 1e9


@dataclass(frozen=True)
class Roofline:
    """Achieved decode GFLOP/s of one scenario against the GEMM peak of the run."""

    scenario: str
    achieved_gflops: float
    peak_gflops: float

    @property
    def share(self) -> float:
        """Achieved over peak."""
        return self.achieved_gflops / self.peak_gflops if self.peak_gflops > 0 else 0.0

    def describe(self) -> str:
        """One line for the report."""
        return (f"{self.scenario} decode {self.achieved_gflops:.1f} GFLOP/s, "
                f"{100 * self.share:.0f}% of the {self.peak_gflops:.0f} GFLOP/s GEMM peak")
