"""Scheduler behaviour users notice: fairness across tenants, queue limits, cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from loraswap.adapters.demo import write_random_adapter
from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.base_model.loading import Quantization, load_base_model
from loraswap.core.errors import LoraswapError
from loraswap.service.engine.engine import EngineConfig, LoraEngine
from loraswap.service.engine.observer import NullObserver
from loraswap.service.engine.requests import GenerationRequest
from loraswap.service.engine.sampling import SamplingParams
from loraswap.service.errors import OverloadedError, RequestCancelledError
from tests.utils.engine import prefill_logits


def engine_for(base_dir: Path, quantization: Quantization = Quantization.FP32,
               **config: int) -> LoraEngine:
    loaded = load_base_model(base_dir, quantization, "cpu")
    return LoraEngine(loaded.model, loaded.tokenizer,
                      EngineConfig(**{"max_model_len": 128, **config}), NullObserver())


def request(rid: str, key: str, tokens: int = 4) -> GenerationRequest:
    return GenerationRequest(request_id=rid, prompt_ids=[5, 6, 7], fairness_key=key,
                             params=SamplingParams(max_new_tokens=tokens, ignore_eos=True))


async def test_one_tenants_flood_does_not_starve_another(tiny_base_dir: Path) -> None:
    engine = engine_for(tiny_base_dir, max_batch_size=1)
    finished: list[str] = []

    async def run(rid: str, key: str) -> None:
        stream = engine.submit(request(rid, key))
        await stream.collect()
        finished.append(rid)

    tasks = [asyncio.create_task(run(f"flood-{i}", "flood")) for i in range(6)]
    await asyncio.sleep(0)  # the flood is queued first
    tasks.append(asyncio.create_task(run("calm", "calm")))
    await asyncio.sleep(0)
    engine.start()
    try:
        await asyncio.gather(*tasks)
    finally:
        engine.stop()
    # Round-robin admission: the calm tenant's single request runs second, not last.
    assert finished.index("calm") == 1, finished


async def test_queue_limit_and_cancellation(tiny_base_dir: Path) -> None:
    engine = engine_for(tiny_base_dir, max_batch_size=1, max_queue=2)
    first = engine.submit(request("a", "t", tokens=100))
    engine.submit(request("b", "t"))
    with pytest.raises(OverloadedError, match="queue is full"):
        engine.submit(request("c", "t"))
    engine.start()
    try:
        engine.cancel(first)
        with pytest.raises(RequestCancelledError):
            await first.collect()
    finally:
        engine.stop()


# On the wide-logits tiny model (logit std ~4, a row spans ~25) and adapters whose effect
# on the logits is several units; the tolerances sit an order of magnitude below both.
PRECISION_TOLERANCE = 0.25
ADAPTER_EFFECT = 2.0


async def test_nf4_base_with_adapters_matches_peft_on_the_same_base(
        wide_logits_base_dir: Path, tmp_path: Path) -> None:
    """On a bitsandbytes 4-bit base the slot LoRA path gives PEFT's logits (bf16 tolerance)."""
    folder = write_random_adapter(wide_logits_base_dir, tmp_path / "nf4-adapter", rank=8,
                                  targets=("q_proj", "v_proj", "down_proj"), seed=0)
    engine = engine_for(wide_logits_base_dir, Quantization.NF4, max_batch_size=2, max_loras=1)
    assert type(engine.runner.model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    weights = read_lora_adapter(folder)
    engine.table.load(1, weights)
    prompt = [5, 6, 7, 8, 9, 10]
    ours = prefill_logits(engine, [prompt, prompt], [1, 0])
    reference_base = load_base_model(wide_logits_base_dir, Quantization.NF4, "cpu").model
    peft_model = PeftModel.from_pretrained(reference_base, folder).eval()
    with torch.inference_mode():
        theirs = peft_model(torch.tensor([prompt])).logits[0, -1].float()
        with peft_model.disable_adapter():
            base = peft_model(torch.tensor([prompt])).logits[0, -1].float()
    assert (theirs - base).abs().max() > ADAPTER_EFFECT  # the adapter really matters here
    torch.testing.assert_close(ours[0], theirs, rtol=0, atol=PRECISION_TOLERANCE)
    torch.testing.assert_close(ours[1], base, rtol=0, atol=PRECISION_TOLERANCE)


async def test_bf16_mixed_batch_logits_match_peft_within_tolerance(
        wide_logits_base_dir: Path, tmp_path: Path) -> None:
    folders = [write_random_adapter(wide_logits_base_dir, tmp_path / f"bf{i}", rank=4 * (i + 1),
                                    seed=i, targets=("q_proj", "k_proj", "up_proj"))
               for i in range(2)]
    engine = engine_for(wide_logits_base_dir, Quantization.BF16, max_batch_size=3, max_loras=2)
    for slot, folder in enumerate(folders, start=1):
        engine.table.load(slot, read_lora_adapter(folder))
    prompt = [11, 12, 13, 14]
    ours = prefill_logits(engine, [prompt] * 3, [1, 2, 0])
    model = LlamaForCausalLM.from_pretrained(wide_logits_base_dir, dtype=torch.bfloat16).eval()
    with torch.inference_mode():
        base = model(torch.tensor([prompt])).logits[0, -1].float()
    torch.testing.assert_close(ours[2], base, rtol=0, atol=PRECISION_TOLERANCE)
    for row, folder in enumerate(folders):
        model = LlamaForCausalLM.from_pretrained(wide_logits_base_dir, dtype=torch.bfloat16)
        peft_model = PeftModel.from_pretrained(model, folder).eval()
        with torch.inference_mode():
            theirs = peft_model(torch.tensor([prompt])).logits[0, -1].float()
        assert (theirs - base).abs().max() > ADAPTER_EFFECT, row  # each adapter matters
        torch.testing.assert_close(ours[row], theirs, rtol=0, atol=PRECISION_TOLERANCE)


async def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(
        tiny_base_dir: Path) -> None:
    engine = engine_for(tiny_base_dir, max_batch_size=2)
    real_step = engine.runner.step
    calls = {"n": 0}

    def broken_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated kernel failure")
        return real_step(*args, **kwargs)

    engine.runner.step = broken_once  # type: ignore[method-assign]
    engine.start()
    try:
        with pytest.raises(LoraswapError, match="engine failed this request"):
            await engine.submit(request("doomed", "t", tokens=8)).collect()
        result = await engine.submit(request("after", "t", tokens=8)).collect()
    finally:
        engine.stop()
    assert result.completion_tokens == 8
    assert engine.scheduler.num_running == 0
