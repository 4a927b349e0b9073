"""The paged KV cache as users meet it: the same tokens and logits as a full recompute,
chunked prefill equal to one-shot, preemption that no stream notices, no leaked blocks, and
a prefix cache that reuses blocks only within one tenant, adapter and version."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch

from loraswap.adapters.lora_format import LoraAdapterWeights, read_lora_adapter
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.engine import LoraEngine
from loraswap.service.engine.observer import NullObserver
from loraswap.service.engine.paged_attention import StepChunk
from loraswap.service.engine.requests import GenerationEvent, GenerationRequest
from loraswap.service.engine.sampling import SamplingParams
from loraswap.service.errors import RequestCancelledError
from tests.conftest import AdapterFactory
from tests.utils.engine import make_engine

# Prompt lengths below, at and across 16-token block boundaries.
LENGTHS = [3, 15, 16, 17, 33, 40]


class KvRecorder(NullObserver):
    """Counts preemptions and prefix-cache lookups."""

    def __init__(self) -> None:
        self.preemptions = 0
        self.lookups: list[tuple[int, int]] = []  # (queried, hit) per admission

    def preempted(self, adapter: str) -> None:
        self.preemptions += 1

    def prefix_lookup(self, *, queried: int, hit: int) -> None:
        self.lookups.append((queried, hit))


def _prompts(seed: int, lengths: list[int], vocab: int = 200) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def _full_recompute_logits(engine: LoraEngine, seqs: list[list[int]],
                           slots: list[int]) -> torch.Tensor:
    """Last-token logits of whole sequences from a cache-free forward pass."""
    normed = engine.runner.encode(seqs, slots)
    last = torch.stack([normed[i, len(seq) - 1] for i, seq in enumerate(seqs)])
    with torch.inference_mode():
        logits: torch.Tensor = engine.runner.model.lm_head(last).float()
    return logits


@pytest.mark.parametrize("block_size", [16, 4])
def test_paged_decoding_equals_a_full_recompute(
        wide_logits_base_dir: Path, make_adapter: AdapterFactory, block_size: int) -> None:
    """Mixed adapters, prompt lengths across block boundaries, prefill then 20 decode steps
    of the whole batch: every step's logits equal a cache-free forward within 1e-5 (fp32)
    and the greedy tokens are the same."""
    engine = make_engine(wide_logits_base_dir, kv_block_size=block_size)
    for slot, seed in ((1, 1), (2, 2)):
        folder = make_adapter(f"a{slot}", seed=seed, targets=("q_proj", "k_proj", "v_proj",
                                                              "down_proj"))
        engine.table.load(slot, read_lora_adapter(folder))
    seqs = _prompts(0, LENGTHS)
    slots = [0, 1, 2, 1, 0, 2]
    pool = engine.pool
    tables = [pool.allocate(pool.blocks_for(len(s) + 20)) or [] for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]) > 1)
    chunks = [StepChunk(seqs[i], 0, tables[i], slots[i]) for i in order]
    logits = engine.runner.step(chunks).logits[torch.tensor(order).argsort()]
    for _ in range(20):
        expected = _full_recompute_logits(engine, seqs, slots)
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
        for seq, token in zip(seqs, logits.argmax(-1).tolist(), strict=True):
            seq.append(token)
        chunks = [StepChunk([seq[-1]], len(seq) - 1, table, slot)
                  for seq, table, slot in zip(seqs, tables, slots, strict=True)]
        logits = engine.runner.step(chunks).logits
    assert any(len(seq) > 2 * block_size for seq in seqs)


def test_chunked_prefill_equals_one_shot(wide_logits_base_dir: Path,
                                         make_adapter: AdapterFactory) -> None:
    """A 45-token prompt prefilled in chunks of 7 (beside a decoding sequence) gives the
    logits of one-shot prefill."""
    engine = make_engine(wide_logits_base_dir)
    engine.table.load(1, read_lora_adapter(make_adapter("a", seed=3)))
    prompt, other = _prompts(1, [45, 10])
    pool = engine.pool
    one_shot = engine.runner.step(
        [StepChunk(prompt, 0, pool.allocate(3) or [], 1)]).logits[0]
    table, other_table = pool.allocate(3) or [], pool.allocate(1) or []
    engine.runner.step([StepChunk(other, 0, other_table, 0)])
    for start in range(0, 45, 7):
        out = engine.runner.step([StepChunk([other[-1]], len(other) - 1, other_table, 0),
                                  StepChunk(prompt[start:start + 7], start, table, 1)])
        other.append(int(out.logits[0].argmax()))
    torch.testing.assert_close(out.logits[1], one_shot, rtol=0, atol=1e-5)


def _request(rid: str, prompt: list[int], tokens: int, *, key: str = "t",
             adapter: AdapterVersionRef | None = None, weights: LoraAdapterWeights | None = None,
             ) -> GenerationRequest:
    return GenerationRequest(request_id=rid, prompt_ids=prompt, fairness_key=key,
                             adapter=adapter, adapter_weights=weights,
                             params=SamplingParams(max_new_tokens=tokens, ignore_eos=True))


async def _run(engine: LoraEngine, requests: list[GenerationRequest],
               ) -> list[list[GenerationEvent]]:
    """Every request's events; a lost block shows as requests that never finish, so a
    hang fails the test instead of blocking it."""
    streams = [engine.submit(r) for r in requests]
    return list(await asyncio.wait_for(asyncio.gather(*(_events(s) for s in streams)), 60))


async def _events(stream: object) -> list[GenerationEvent]:
    return [event async for event in stream.events()]  # type: ignore[attr-defined]


async def test_chunked_engine_gives_one_shot_tokens_and_embeddings(
        wide_logits_base_dir: Path) -> None:
    prompts = _prompts(2, [60, 37, 5])
    results = []
    for budget in (4096, 13):  # 13: chunks cut blocks
        engine = make_engine(wide_logits_base_dir, max_prefill_tokens=budget)
        engine.start()
        try:
            results.append(await _run(engine, [_request(f"r{i}", p, 12)
                                               for i, p in enumerate(prompts)]))
        finally:
            engine.stop()
    for whole, chunked in zip(*results, strict=True):
        assert [e.token_ids for e in whole] == [e.token_ids for e in chunked]
        torch.testing.assert_close(torch.tensor(chunked[-1].token_logprobs),
                                   torch.tensor(whole[-1].token_logprobs), rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.tensor(chunked[-1].embedding),
                                   torch.tensor(whole[-1].embedding), rtol=0, atol=1e-5)


async def test_preempted_requests_complete_with_their_solo_tokens(
        wide_logits_base_dir: Path) -> None:
    """Six requests of ~60 tokens in a pool of 8 blocks of 16 (one sequence needs 4):
    sequences are preempted and recomputed, and every stream still carries, once each,
    exactly the tokens the request gets when it runs alone."""
    prompts = _prompts(3, [5, 20, 11, 30, 17, 2])
    recorder = KvRecorder()
    per_token = 2 * 2 * 2 * 16 * 4  # layers, k+v, kv heads, head_dim, fp32
    engine = make_engine(wide_logits_base_dir, observer=recorder, max_model_len=64,
                         kv_cache_bytes=8 * 16 * per_token, max_batch_size=6)
    assert engine.pool.num_blocks == 8
    engine.start()
    try:
        solo = [(await _run(engine, [_request(f"s{i}", p, 64 - len(p) - 1)]))[0]
                for i, p in enumerate(prompts)]
        assert recorder.preemptions == 0
        together = await _run(engine, [_request(f"b{i}", p, 64 - len(p) - 1, key=f"k{i}")
                                       for i, p in enumerate(prompts)])
    finally:
        engine.stop()
    assert recorder.preemptions > 0
    for alone, batched in zip(solo, together, strict=True):
        assert [e.token_ids for e in batched] == [e.token_ids for e in alone]
        assert batched[-1].error is None and batched[-1].finish_reason == "length"
    assert engine.pool.referenced() == []


async def test_no_block_leaks_after_many_requests_cancellations_and_disconnects(
        tiny_base_dir: Path) -> None:
    """1,000 requests of random lengths sharing prefixes, a third of them cancelled at
    random points (before admission, mid-prefill, mid-decode: what a client disconnect
    does), through a pool small enough to preempt: afterwards no block is referenced and
    every block is free or a cached prefix."""
    per_token = 2 * 2 * 2 * 16 * 4
    engine = make_engine(tiny_base_dir, max_model_len=64, kv_cache_bytes=10 * 16 * per_token,
                         max_prefill_tokens=24, max_queue=1000)
    rng = random.Random(7)
    shared = _prompts(4, [40])[0]
    engine.start()

    async def one(i: int) -> None:
        length = rng.randint(1, 50)
        prompt = shared[:length] if rng.random() < 0.5 else _prompts(i, [length])[0]
        stream = engine.submit(_request(f"r{i}", prompt, rng.randint(1, 63 - length),
                                        key=f"k{i % 5}"))
        cancel_after = rng.randint(0, 6) if rng.random() < 0.33 else None
        count = 0
        try:
            async for _ in stream.events():
                count += 1
                if cancel_after is not None and count >= cancel_after:
                    engine.cancel(stream)
        except RequestCancelledError:
            pass
        if cancel_after == 0:
            engine.cancel(stream)

    try:
        for wave in range(20):
            await asyncio.wait_for(asyncio.gather(*(one(wave * 50 + i) for i in range(50))), 60)
    finally:
        engine.stop()
    pool = engine.pool
    assert pool.referenced() == [] and pool.used == 0
    assert pool.available() == pool.num_blocks
    assert engine.scheduler.num_running == 0


async def test_prefix_cache_hit_gives_the_miss_logits_and_never_crosses_scopes(
        wide_logits_base_dir: Path, make_adapter: AdapterFactory) -> None:
    """A repeated 40-token prompt reuses its two full blocks and answers with the same
    tokens, log-probabilities and embedding; the same prompt under another adapter, another
    version of the adapter, another tenant, or the base model of another tenant, shares
    nothing."""
    recorder = KvRecorder()
    engine = make_engine(wide_logits_base_dir, observer=recorder)
    folders = {"x": make_adapter("x", seed=5), "y": make_adapter("y", seed=6)}
    prompt = _prompts(5, [40])[0]

    async def ask(tenant: str, name: str | None, version: str = "1",
                  ) -> tuple[list[int], GenerationEvent]:
        key = weights = None
        if name is not None:
            key = AdapterVersionRef.parse(f"{name}@{version}")
            weights = await engine.adapter_weights(
                key, lambda: read_lora_adapter(folders[name]))
        events = (await _run(engine, [_request("p", prompt, 6, key=tenant, adapter=key,
                                               weights=weights)]))[0]
        return [t for e in events for t in e.token_ids], events[-1]

    engine.start()
    try:
        miss = await ask("acme", "x")
        hit = await ask("acme", "x")
        others = [await ask("acme", "x", version="2"), await ask("acme", "y"),
                  await ask("globex", "x"), await ask("acme", None), await ask("globex", None)]
        base_again = await ask("globex", None)
    finally:
        engine.stop()
    assert recorder.lookups[0] == (2, 0) and recorder.lookups[1] == (2, 2)
    assert [hits for _, hits in recorder.lookups[2:7]] == [0] * 5
    assert recorder.lookups[7] == (2, 2)
    (hit_tokens, hit_end), (miss_tokens, miss_end) = hit, miss
    assert hit_tokens == miss_tokens
    torch.testing.assert_close(torch.tensor(hit_end.token_logprobs),
                               torch.tensor(miss_end.token_logprobs), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(hit_end.embedding),
                               torch.tensor(miss_end.embedding), rtol=0, atol=1e-5)
    # The other tenant's base-model answer, computed then reused, is the base model's.
    assert base_again[0] == others[4][0]


class StepTokens(NullObserver):
    """Each forward pass's kind and token count, in order."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int]] = []

    def engine_step(self, kind: str, seconds: float, tokens: int) -> None:  # type: ignore[override]
        self.steps.append((kind, tokens))


@pytest.mark.parametrize("per_decode", [1.0, 2.0])
async def test_a_long_prompt_beside_running_streams_is_prefilled_a_little_each_step(
        wide_logits_base_dir: Path, per_decode: float) -> None:
    """While three streams decode, a 100-token prompt arriving among them is prefilled at
    most ``per_decode`` tokens per decoding stream (at least one 16-token block) a step,
    so no step of theirs carries the whole prompt; the prompt's answer is the one it gets
    alone, prefilled in one step."""
    streams, long = _prompts(5, [8, 8, 8]), _prompts(6, [100])[0]
    alone_engine = make_engine(wide_logits_base_dir)
    alone_engine.start()
    try:
        alone = await _run(alone_engine, [_request("long", long, 6)])
    finally:
        alone_engine.stop()
    recorder = StepTokens()
    engine = make_engine(wide_logits_base_dir, recorder,
                         prefill_tokens_per_decode=per_decode)  # type: ignore[arg-type]
    engine.start()
    try:
        running = [engine.submit(_request(f"s{i}", p, 24)) for i, p in enumerate(streams)]
        while sum(kind == "decode" for kind, _ in recorder.steps) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        beside = await _run(engine, [_request("long", long, 6)])
        await asyncio.wait_for(asyncio.gather(*(_events(s) for s in running)), 60)
    finally:
        engine.stop()
    assert [e.token_ids for e in beside[0]] == [e.token_ids for e in alone[0]]
    cap = 3 + max(16, int(3 * per_decode))  # three decodes + the prompt's chunk
    prefill_steps = [tokens for kind, tokens in recorder.steps[3:] if kind == "prefill"]
    assert len(prefill_steps) >= 100 // cap  # the prompt took several steps ...
    assert max(prefill_steps) <= cap  # ... none of them larger than the cap
