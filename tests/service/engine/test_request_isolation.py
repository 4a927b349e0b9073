"""One request's trouble stays its own: row failures, tiny temperatures, stop strings, queue
shares and cancelled requests leaving the queue at once."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch

from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.base_model.loading import Quantization, load_base_model
from loraswap.core.errors import InvalidRequestError, LoraswapError
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.detokenizer import MAX_STOP_CHARS, StopString
from loraswap.service.engine.engine import EngineConfig, LoraEngine
from loraswap.service.engine.observer import NullObserver
from loraswap.service.engine.paged_attention import StepChunk
from loraswap.service.engine.requests import GenerationRequest
from loraswap.service.engine.runner import StepOutput
from loraswap.service.engine.sampling import SamplingParams, TokenSampler, sample_rows
from loraswap.service.errors import OverloadedError, RowFailedError
from tests.conftest import AdapterFactory


def make_engine(base_dir: Path, **config: int) -> LoraEngine:
    loaded = load_base_model(base_dir, Quantization.FP32, "cpu")
    return LoraEngine(loaded.model, loaded.tokenizer,
                      EngineConfig(**{"max_model_len": 128, **config}), NullObserver())


def gen(rid: str, *, key: str = "t", tokens: int = 6, temperature: float = 0.0,
        adapter: AdapterVersionRef | None = None, weights: object = None) -> GenerationRequest:
    return GenerationRequest(
        request_id=rid, prompt_ids=[5, 6, 7, 8], fairness_key=key,
        params=SamplingParams(max_new_tokens=tokens, ignore_eos=True, temperature=temperature,
                              seed=1),
        adapter=adapter, adapter_weights=weights)  # type: ignore[arg-type]


async def test_a_row_with_nan_logits_fails_alone(tiny_base_dir: Path,
                                                 make_adapter: AdapterFactory) -> None:
    """An adapter whose weights turn its logits into NaN fails its own request; the base
    request decoded in the same batches finishes with the text it has when run alone."""
    engine = make_engine(tiny_base_dir, max_batch_size=4)
    poisoned = read_lora_adapter(make_adapter("poisoned"))
    poisoned.factors = {k: (a, torch.full_like(b, float("nan")))
                        for k, (a, b) in poisoned.factors.items()}
    engine.start()
    try:
        alone = await engine.submit(gen("alone")).collect()
        healthy = engine.submit(gen("healthy"))
        bad = engine.submit(gen("bad", key="other", adapter=AdapterVersionRef.parse("poisoned@1"),
                                weights=poisoned))
        with pytest.raises(RowFailedError, match="non-finite logits"):
            await bad.collect()
        result = await healthy.collect()
    finally:
        engine.stop()
    assert result.token_ids == alone.token_ids
    assert result.completion_tokens == 6


async def test_tiny_temperatures_decode_like_greedy(tiny_base_dir: Path) -> None:
    """temperature=1e-39 used to overflow the logits and fail every running request; it is
    greedy decoding now, and 1e-3 (just above the greedy threshold) samples without error."""
    engine = make_engine(tiny_base_dir, max_batch_size=4)
    engine.start()
    try:
        greedy, tiny, small = await asyncio.gather(
            engine.submit(gen("greedy")).collect(),
            engine.submit(gen("tiny", temperature=1e-39)).collect(),
            engine.submit(gen("small", temperature=1e-3)).collect())
    finally:
        engine.stop()
    assert tiny.token_ids == greedy.token_ids
    assert small.completion_tokens == 6  # sampled, finished, no error


def test_sampling_a_row_that_raises_reports_that_row_only() -> None:
    logits = torch.randn(3, 11)
    sampled = TokenSampler(SamplingParams(temperature=0.7, seed=3))
    greedy = TokenSampler(SamplingParams())
    logits[1] = float("inf")
    tokens = sample_rows(logits, [greedy, sampled, None])
    assert tokens[0] == int(logits[0].argmax())
    assert isinstance(tokens[1], LoraswapError)
    assert tokens[2] == -1


async def test_a_prefill_that_raises_fails_only_the_request_that_breaks_it(
        tiny_base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(tiny_base_dir, max_batch_size=4)
    real_step = engine.runner.step
    poison = [9, 9, 9, 9]

    def step(chunks: list[StepChunk], hidden_until: list[int] | None = None) -> StepOutput:
        if any(chunk.tokens == poison for chunk in chunks):
            raise RuntimeError("kernel fault")
        return real_step(chunks, hidden_until)

    monkeypatch.setattr(engine.runner, "step", step)
    good = engine.submit(gen("good"))
    bad_request = gen("bad", key="other")
    bad_request.prompt_ids = poison
    bad = engine.submit(bad_request)
    engine.start()  # both are admitted in the same step, so prefilled together first
    try:
        with pytest.raises(LoraswapError, match="engine failed this request"):
            await bad.collect()
        assert (await good.collect()).completion_tokens == 6
    finally:
        engine.stop()


def _longest_partial_by_brute_force(stop: str, text: str) -> int:
    for size in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0


def test_partial_stop_matching_agrees_with_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(3000):
        stop = "".join(rng.choice("ab") for _ in range(rng.randint(1, 8)))
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 12)))
        assert StopString.of(stop).partial_suffix(text) == \
            _longest_partial_by_brute_force(stop, text), (stop, text)


def test_stop_strings_longer_than_the_bound_are_refused() -> None:
    SamplingParams(stop=("x" * MAX_STOP_CHARS,))
    with pytest.raises(InvalidRequestError, match=f"at most {MAX_STOP_CHARS}"):
        SamplingParams(stop=("x" * (MAX_STOP_CHARS + 1),))


def test_one_caller_cannot_fill_the_whole_queue(tiny_base_dir: Path) -> None:
    engine = make_engine(tiny_base_dir, max_batch_size=1, max_queue=4, max_queue_per_tenant=2)

    async def submit_all() -> None:
        engine.submit(gen("a1", key="flood"))
        engine.submit(gen("a2", key="flood"))
        with pytest.raises(OverloadedError, match="share of the queue"):
            engine.submit(gen("a3", key="flood"))
        engine.submit(gen("b1", key="calm"))  # another caller still has room

    asyncio.run(submit_all())
    assert engine.scheduler.num_waiting == 3


async def test_a_full_queue_makes_room_for_a_caller_holding_less(tiny_base_dir: Path) -> None:
    """Shares can add up to more than the queue (here one caller's share is all of it, as
    with LORASWAP_MAX_QUEUE=64 and the default share of 64): a flood that filled the queue
    gives up its newest place to a caller holding fewer, who is not refused; the request
    pushed out ends with a 429 (OverloadedError with a retry delay)."""
    engine = make_engine(tiny_base_dir, max_batch_size=1, max_queue=4)
    flood = [engine.submit(gen(f"f{i}", key="flood")) for i in range(4)]
    calm = [engine.submit(gen("c0", key="calm"))]  # was: OverloadedError, queue is full
    with pytest.raises(OverloadedError, match="holds the most") as shed:
        await flood[3].collect()
    assert shed.value.retry_after >= 1
    calm.append(engine.submit(gen("c1", key="calm")))  # flood 3 places, calm 1: room again
    with pytest.raises(OverloadedError, match="queue is full"):
        engine.submit(gen("f4", key="flood"))  # 2 and 2 now: nobody holds more
    with pytest.raises(OverloadedError, match="queue is full"):
        engine.submit(gen("c2", key="calm"))
    assert engine.scheduler.num_waiting == 4
    with pytest.raises(OverloadedError):
        await flood[2].collect()
    engine.start()
    try:
        for stream in [*flood[:2], *calm]:
            assert len((await stream.collect()).token_ids) == 6
    finally:
        engine.stop()


async def test_a_cancelled_request_leaves_the_queue_at_once(tiny_base_dir: Path) -> None:
    """With the engine not stepping at all, cancelling a waiting request frees its place."""
    engine = make_engine(tiny_base_dir, max_batch_size=1, max_queue=2)
    first = engine.submit(gen("a"))
    engine.submit(gen("b"))
    with pytest.raises(OverloadedError):
        engine.submit(gen("c"))
    engine.cancel(first)
    assert engine.scheduler.num_waiting == 1
    engine.submit(gen("c"))  # the freed place is usable right away
    with pytest.raises(LoraswapError, match="cancelled"):
        await first.collect()
