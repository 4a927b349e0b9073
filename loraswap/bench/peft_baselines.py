"""The baselines users build with PEFT: a locked one-at-a-time server and mixed batches."""

from __future__ import annotations

import asyncio
import copy
import functools
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from loraswap.bench.report import RequestTiming, ScenarioResult, closed_loop_clients


class FirstTokenClock(BaseStreamer):  # type: ignore[misc]  # untyped library base class
    """Streamer that only notes when ``generate`` emits its first new token."""

    def __init__(self) -> None:
        self._puts = 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        """The first call carries the prompt, the second the first new tokens."""
        self._puts += 1
        if self._puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        """Nothing to flush."""


def build_peft_model(model: Any, folders: list[Path]) -> tuple[Any, list[str]]:
    """Wrap ``model`` in PEFT with every adapter loaded (``load_adapter``), named by folder."""
    from peft import PeftModel

    names = [folder.name for folder in folders]
    peft_model = PeftModel.from_pretrained(model, str(folders[0]), adapter_name=names[0])
    for folder, name in zip(folders[1:], names[1:], strict=True):
        peft_model.load_adapter(str(folder), adapter_name=name)
    peft_model.eval()
    return peft_model, names


def greedy_config(model: Any, max_new_tokens: int, pad_token_id: int) -> Any:
    """Greedy generation of exactly ``max_new_tokens`` tokens (EOS never stops it)."""
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = max_new_tokens
    config.min_new_tokens = None
    config.max_length = None
    config.do_sample = False
    config.temperature = None
    config.top_p = None
    config.top_k = None
    config.eos_token_id = None
    config.pad_token_id = pad_token_id
    return config


def _pad_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for a batch of prompts."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def run_naive_server(peft_model: Any, names: list[str], tokenizer: Any,
                     prompts: list[list[int]], max_new_tokens: int,
                     concurrency: int,
    submit: Callable[[Callable[[], Any]], Future[Any]] | None = None,
) -> ScenarioResult:
    """``concurrency`` clients against a server that, per request, takes a lock, calls
    ``set_adapter(name)`` and ``generate``: requests are served one at a time."""
    config = greedy_config(peft_model, max_new_tokens, _pad_id(tokenizer))

    def generate_one(name: str, prompt: list[int]) -> tuple[int, float | None]:
        peft_model.set_adapter(name)
        clock = FirstTokenClock()
        with torch.inference_mode():
            out = peft_model.generate(
                input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                           dtype=torch.long),
                generation_config=config, streamer=clock,
            )
        return int(out.shape[1] - len(prompt)), clock.first_token_at

    async def serve() -> tuple[list[RequestTiming], float]:
        lock = asyncio.Lock()
        # One model worker thread, as in a typical server (and one OpenMP team for torch):
        # the caller's torch thread when given, so every scenario runs torch on one thread.
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="naive-model")
        run = submit or worker.submit

        async def request(index: int) -> RequestTiming:
            started = time.perf_counter()
            async with lock:
                name, prompt = names[index % len(names)], prompts[index]
                tokens, first = await asyncio.wrap_future(
                    run(functools.partial(generate_one, name, prompt)))
            ended = time.perf_counter()
            return RequestTiming((first or ended) - started, ended - started, tokens)

        try:
            return await closed_loop_clients(len(prompts), concurrency, request)
        finally:
            worker.shutdown()

    timings, wall = asyncio.run(serve())
    used = min(len(names), len(prompts))
    return ScenarioResult.from_timings(
        "naive", used, timings, wall,
        note=f"PEFT set_adapter+generate under a lock, {min(concurrency, len(prompts))} clients",
    )


def run_peft_mixed(peft_model: Any, names: list[str], tokenizer: Any,
                   prompts: list[list[int]], max_new_tokens: int,
                   batch_size: int) -> ScenarioResult:
    """All requests arrive at once and are served in batches of ``batch_size`` by one
    ``generate(..., adapter_names=[...])`` each (left padding); adapters round-robin."""
    config = greedy_config(peft_model, max_new_tokens, _pad_id(tokenizer))
    pad_id = _pad_id(tokenizer)
    timings: list[RequestTiming] = []
    started = time.perf_counter()
    for begin in range(0, len(prompts), batch_size):
        batch = prompts[begin:begin + batch_size]
        adapter_names = [names[(begin + i) % len(names)] for i in range(len(batch))]
        ids, mask = left_pad(batch, pad_id)
        clock = FirstTokenClock()
        with torch.inference_mode():
            out = peft_model.generate(
                input_ids=ids, attention_mask=mask, adapter_names=adapter_names,
                generation_config=config, streamer=clock,
            )
        ended = time.perf_counter()
        tokens = int(out.shape[1] - ids.shape[1])
        first = clock.first_token_at or ended
        timings.extend(RequestTiming(first - started, ended - started, tokens) for _ in batch)
    wall = time.perf_counter() - started
    used = min(len(names), len(prompts))
    return ScenarioResult.from_timings(
        "peft-mixed", used, timings, wall,
        note=f"PEFT generate(adapter_names=...), batches of {min(batch_size, len(prompts))}",
    )
