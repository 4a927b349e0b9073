"""Engines on the tiny model, and an observer that holds the engine thread at a chosen
point so a test can act mid-generation without relying on timing."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from loraswap.service.engine.engine import EngineConfig, LoraEngine
from loraswap.service.engine.observer import EngineObserver, NullObserver
from loraswap.service.engine.paged_attention import StepChunk

DEFAULT_ENGINE_LIMITS = {"max_loras": 4, "max_lora_rank": 16, "max_batch_size": 8,
                         "max_model_len": 128}


def make_engine(base_dir: Path, observer: EngineObserver | None = None,
                **overrides: int) -> LoraEngine:
    """An fp32 engine (not started) on the model in ``base_dir``; ``overrides`` change
    :data:`DEFAULT_ENGINE_LIMITS`."""
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    config = EngineConfig(**{**DEFAULT_ENGINE_LIMITS, **overrides})  # type: ignore[arg-type]
    return LoraEngine(model, tokenizer, config, observer or NullObserver())


def prefill_logits(engine: LoraEngine, prompts: list[list[int]],
                   slots: list[int]) -> torch.Tensor:
    """Float32 last-token logits of whole prompts (two tokens or more) prefilled together
    through the paged KV cache, as the scheduler runs them; their blocks are given back."""
    pool = engine.pool
    tables = [pool.allocate(pool.blocks_for(len(prompt))) for prompt in prompts]
    try:
        chunks = [StepChunk(prompt, 0, table or [], slot)
                  for prompt, table, slot in zip(prompts, tables, slots, strict=True)]
        return engine.runner.step(chunks).logits
    finally:
        for table in tables:
            pool.release(table or [])


class StepGate(NullObserver):
    """Holds the engine thread at the end of its ``pause_after``-th step,
    until :meth:`resume`; records how many sequences every step ran.

    The scheduler reports its state to the observer on the engine thread at the end of each
    step, so a test can submit requests while earlier ones are provably mid-generation.
    """

    def __init__(self, pause_after: int) -> None:
        self.pause_after = pause_after
        self.running_per_step: list[int] = []
        self.paused = threading.Event()
        self._resume = threading.Event()

    def scheduler_state(self, *, waiting: int, running: int) -> None:
        self.running_per_step.append(running)
        if len(self.running_per_step) == self.pause_after:
            self.paused.set()
            if not self._resume.wait(120):
                raise AssertionError("StepGate was never resumed")

    def resume(self) -> None:
        """Let the engine thread go on."""
        self._resume.set()

    async def wait_paused(self) -> None:
        """Wait (off the event loop) until the engine thread is held."""
        held = await asyncio.to_thread(self.paused.wait, 120)
        assert held, "the engine never reached the gate"
