"""Every engine forward pass is timed and counted in ``/metrics`` (by kind)."""

from __future__ import annotations

import asyncio
from itertools import count
from pathlib import Path

from loraswap.service.engine.observer import NullObserver, StepKind
from loraswap.service.engine.runner import LlamaRunner
from loraswap.service.metrics import ServiceMetrics
from tests.service.engine.references import engine_greedy, make_engine


class StepRecorder(NullObserver):
    """Keeps every step the engine reports."""

    def __init__(self) -> None:
        self.steps: list[tuple[StepKind, float, int]] = []

    def engine_step(self, kind: StepKind, seconds: float, tokens: int) -> None:
        self.steps.append((kind, seconds, tokens))


async def test_steps_report_their_real_tokens_and_time(tiny_base_dir: Path) -> None:
    recorder = StepRecorder()
    engine = make_engine(tiny_base_dir, observer=recorder, max_batch_size=4)
    ticks = count()
    runner: LlamaRunner = engine.runner
    runner._clock = lambda: 0.5 * next(ticks)  # every step "takes" half a second
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    engine.start()
    try:
        await asyncio.gather(*(engine_greedy(engine, None, None, prompt, 4, f"r{i}")
                               for i, prompt in enumerate(prompts)))
    finally:
        engine.stop()
    prefilled = sum(tokens for kind, _, tokens in recorder.steps if kind == "prefill")
    assert prefilled == 3 + 5
    decoded = [tokens for kind, _, tokens in recorder.steps if kind == "decode"]
    # 4 tokens each: the first comes from prefill, 3 from decode steps of <= 2 sequences
    # (idle cache rows are not counted).
    assert sum(decoded) == 2 * 3 and max(decoded) == 2
    assert {seconds for _, seconds, _ in recorder.steps} == {0.5}


def test_metrics_expose_step_histograms() -> None:
    metrics = ServiceMetrics()
    metrics.engine_step("decode", 0.02, 16)
    metrics.engine_step("decode", 0.04, 32)
    metrics.engine_step("prefill", 0.3, 512)
    text = metrics.render().decode()
    assert 'loraswap_engine_step_seconds_count{kind="decode"} 2.0' in text
    assert 'loraswap_engine_step_seconds_sum{kind="prefill"} 0.3' in text
    assert 'loraswap_engine_step_tokens_bucket{kind="decode",le="16.0"} 1.0' in text
    assert 'loraswap_engine_step_tokens_sum{kind="decode"} 48.0' in text
