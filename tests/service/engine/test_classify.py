"""Classification adapters on the engine: probabilities equal PEFT's, mixed with generation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.classify import (
    pooled_position,
)
from loraswap.service.engine.engine import LoraEngine
from loraswap.service.engine.observer import EngineObserver
from loraswap.service.engine.requests import GenerationRequest
from loraswap.service.engine.sampling import SamplingParams
from loraswap.service.errors import OverloadedError, RequestCancelledError
from tests.service.engine import references
from tests.service.engine.references import (
    PAD,
    assert_matches_peft,
    peft_probs,
    results_of,
    submit_classify,
)
from tests.utils.engine import StepGate
from tests.utils.engine import make_engine as make_shared_engine

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NEW_TOKENS = 12
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [40, 41, 42, 43, 44, 45, 46, 47, 48],
           [70, 71, 72, 73, PAD]]  # the last ends in the pad token: pooled one token earlier


@pytest.fixture
def adapters(make_classifier_adapter, make_adapter) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    return {
        "sentiment": make_classifier_adapter("sentiment", task="seq-cls", seed=1),
        "topic": make_classifier_adapter("topic", task="seq-cls", labels=["a", "b"], seed=2,
                                         rank=8, targets=ALL_TARGETS),
        "ner": make_classifier_adapter("ner", task="token-cls", seed=3,
                                       targets=("q_proj", "k_proj", "o_proj", "down_proj")),
        "ner-both-ways": make_classifier_adapter("ner-both-ways", task="token-cls", seed=5,
                                                 attention="bidirectional"),
        "writer": make_adapter("writer", rank=4, seed=4),
    }


def peft_greedy(base_dir: Path, folder: Path, prompt: list[int]) -> list[int]:
    return references.peft_greedy(base_dir, folder, prompt, NEW_TOKENS)


def make_engine(base_dir: Path, observer: EngineObserver | None = None,
                **overrides: int) -> LoraEngine:
    """The shared engine helper with this file's batch size (4) unless overridden."""
    return make_shared_engine(base_dir, observer, **{"max_batch_size": 4, **overrides})


async def read_weights(engine: LoraEngine, adapters: dict[str, Path], *names: str) -> None:
    """Put ``names`` in the host tier now, so later submits need no engine-thread call
    (the engine thread may be held by a :class:`StepGate`)."""
    for name in names:
        folder = adapters[name]
        await engine.adapter_weights(AdapterVersionRef.parse(f"{name}@1"),
                                     lambda f=folder, n=name: read_lora_adapter(f, n))


async def submit_generate(engine: LoraEngine, folder: Path, prompt: list[int],
                          ) -> asyncio.Future[list[int]]:
    key = AdapterVersionRef.parse("writer@1")
    weights = await engine.adapter_weights(key, lambda: read_lora_adapter(folder))
    stream = engine.submit(GenerationRequest(
        request_id="gen", prompt_ids=prompt, adapter=key, adapter_weights=weights,
        params=SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)))

    async def tokens() -> list[int]:
        return list((await stream.collect()).token_ids)

    return asyncio.ensure_future(tokens())


def count_encodes(engine: LoraEngine, running: list[int] | None = None) -> list[int]:
    """Record how many prompts each classification forward pass carries (and, in
    ``running``, how many generations were mid-decode at that moment)."""
    calls: list[int] = []
    encode: Callable[..., torch.Tensor] = engine.runner.encode

    def counting(prompts: list[list[int]], slots: list[int],
                 bidirectional: list[bool] | None = None) -> torch.Tensor:
        calls.append(len(prompts))
        if running is not None:
            running.append(engine.scheduler.num_running)
        return encode(prompts, slots, bidirectional)

    engine.runner.encode = counting  # type: ignore[method-assign]
    return calls


async def test_mixed_batch_matches_peft(tiny_base_dir: Path, adapters: dict[str, Path]) -> None:
    """Two seq-cls adapters, a causal and a bidirectional token-cls adapter and a
    generation, all submitted at once: every classification runs in one forward pass in the
    first step and equals PEFT's probabilities (each with its own attention mask); the
    generation equals PEFT's greedy output."""
    engine = make_engine(tiny_base_dir, max_loras=5)
    calls = count_encodes(engine)
    jobs = [(name, prompt) for name in ("sentiment", "topic", "ner", "ner-both-ways")
            for prompt in PROMPTS]
    generation = await submit_generate(engine, adapters["writer"], PROMPTS[0])
    pending = [await submit_classify(engine, n, adapters[n], p, f"c{i}")
               for i, (n, p) in enumerate(jobs)]
    engine.start()
    try:
        results = await results_of(pending)
        tokens = await generation
    finally:
        engine.stop()
    assert calls == [len(jobs)]  # one batch, one step, several adapters mixed
    for (name, prompt), result in zip(jobs, results, strict=True):
        assert_matches_peft(tiny_base_dir, adapters[name], prompt, result)
    assert tokens == peft_greedy(tiny_base_dir, adapters["writer"], PROMPTS[0])
    # The LoRA factors matter far beyond the tolerance (the head alone would not match).
    for name in ("sentiment", "topic", "ner", "ner-both-ways"):
        with_lora = peft_probs(tiny_base_dir, adapters[name], PROMPTS[2])
        head_only = peft_probs(tiny_base_dir, adapters[name], PROMPTS[2], lora=False)
        assert (with_lora - head_only).abs().max() > 1e-3, name
    assert engine.scheduler.num_running == 0 and engine.scheduler.num_waiting == 0


async def test_classification_joins_generation_and_reuses_slots(
        tiny_base_dir: Path, adapters: dict[str, Path]) -> None:
    """With 2 slots and a generation holding one, three classification adapters arriving
    mid-generation (the engine is held after 2 of its 12 tokens) share the other slot in
    turn (each with its own head) and still equal PEFT; the generation is unaffected."""
    gate = StepGate(pause_after=2)
    engine = make_engine(tiny_base_dir, observer=gate, max_loras=2)
    running: list[int] = []
    calls = count_encodes(engine, running)
    jobs = [("sentiment", PROMPTS[1]), ("ner", PROMPTS[0]), ("topic", PROMPTS[3]),
            ("sentiment", PROMPTS[2])]
    engine.start()
    try:
        await read_weights(engine, adapters, "sentiment", "ner", "topic")
        generation = await submit_generate(engine, adapters["writer"], PROMPTS[2])
        await gate.wait_paused()
        pending = [await submit_classify(engine, n, adapters[n], p, f"c{i}")
                   for i, (n, p) in enumerate(jobs)]
        gate.resume()
        results = await results_of(pending)
        tokens = await generation
    finally:
        gate.resume()
        engine.stop()
    for (name, prompt), result in zip(jobs, results, strict=True):
        assert_matches_peft(tiny_base_dir, adapters[name], prompt, result)
    assert tokens == peft_greedy(tiny_base_dir, adapters["writer"], PROMPTS[2])
    # Every classification pass ran while the generation was decoding.
    assert running and all(n == 1 for n in running), running
    # Three adapters, at most two free slots (one while the generation runs): they took
    # turns, each slot reloaded with another adapter and its head.
    assert len(calls) >= 2


async def test_classification_needs_no_cache_row(tiny_base_dir: Path,
                                                 adapters: dict[str, Path]) -> None:
    """Every cache row is busy and another generation waits for one: a classification
    request still runs at once, while the generation goes on."""
    gate = StepGate(pause_after=2)
    engine = make_engine(tiny_base_dir, observer=gate, max_batch_size=1, max_model_len=512)
    running: list[int] = []
    count_encodes(engine, running)
    engine.start()
    try:
        await read_weights(engine, adapters, "ner")
        key = AdapterVersionRef.parse("writer@1")
        weights = await engine.adapter_weights(key, lambda: read_lora_adapter(adapters["writer"]))
        streams = [engine.submit(GenerationRequest(
            request_id=f"g{i}", prompt_ids=PROMPTS[0], adapter=key, adapter_weights=weights,
            params=SamplingParams(max_new_tokens=400, ignore_eos=True))) for i in range(2)]
        long_runs = [asyncio.ensure_future(s.collect()) for s in streams]
        await gate.wait_paused()
        assert engine.scheduler.num_running == 1 and engine.scheduler.num_waiting == 1
        stream = await submit_classify(engine, "ner", adapters["ner"], PROMPTS[1], "c")
        gate.resume()
        result = await stream.result()
        assert not long_runs[0].done() and engine.scheduler.num_waiting == 1
        for generation in streams:
            engine.cancel(generation)
        await asyncio.gather(*long_runs, return_exceptions=True)
    finally:
        gate.resume()
        engine.stop()
    assert running == [1]  # it ran beside the generation that holds the only row
    assert_matches_peft(tiny_base_dir, adapters["ner"], PROMPTS[1], result)


async def test_queue_limit_and_cancellation_apply_to_classification(
        tiny_base_dir: Path, adapters: dict[str, Path]) -> None:
    engine = make_engine(tiny_base_dir, max_queue=2)
    cancelled = await submit_classify(engine, "sentiment", adapters["sentiment"], PROMPTS[0], "a")
    kept = await submit_classify(engine, "ner", adapters["ner"], PROMPTS[1], "b")
    with pytest.raises(OverloadedError, match="queue is full"):
        await submit_classify(engine, "topic", adapters["topic"], PROMPTS[0], "c")
    engine.cancel(cancelled)  # before the engine runs it
    engine.start()
    try:
        with pytest.raises(RequestCancelledError):
            await cancelled.result()
        assert_matches_peft(tiny_base_dir, adapters["ner"], PROMPTS[1], await kept.result())
    finally:
        engine.stop()


async def test_bidirectional_tagger_sees_later_tokens(tiny_base_dir: Path,
                                                     adapters: dict[str, Path]) -> None:
    """Changing the last token changes a bidirectional tagger's answer for the first token,
    never a causal tagger's: the two share one forward pass and keep their own masks."""
    engine = make_engine(tiny_base_dir, max_loras=5)
    prompts = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 60]]
    engine.start()
    try:
        pending = [await submit_classify(engine, name, adapters[name], prompt, f"{name}{i}")
                   for name in ("ner", "ner-both-ways") for i, prompt in enumerate(prompts)]
        causal_a, causal_b, both_a, both_b = await results_of(pending)
    finally:
        engine.stop()
    first = slice(0, 4)  # every token but the one that differs
    torch.testing.assert_close(torch.tensor(causal_a.probs[first]),
                               torch.tensor(causal_b.probs[first]), atol=1e-6, rtol=0)
    gap = (torch.tensor(both_a.probs[0]) - torch.tensor(both_b.probs[0])).abs().max()
    assert gap > 1e-4


def test_pooling_skips_trailing_pad_tokens_like_transformers() -> None:
    assert pooled_position([5, 6, 7], PAD) == 2
    assert pooled_position([5, PAD, 7, PAD, PAD], PAD) == 2
    assert pooled_position([PAD, PAD], PAD) == 0
    assert pooled_position([5, 6, PAD], None) == 2
