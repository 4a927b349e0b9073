"""The engine on each device: the same checks on the CPU (every CI run) and on CUDA (marked
``gpu``: ``scripts/gpu-check.sh`` runs them on a GPU machine, CI skips them for want of one).

- bf16 and NF4 bases give, in one mixed batch of adapters and the base, the logits that
  transformers (+ bitsandbytes) + PEFT give for each alone, classification heads included;
- paged attention over the block pool equals a contiguous, cache-free forward pass;
- no host-device synchronisation inside the per-layer loop of a step;
- sampled (temperature > 0) requests run on the device, reproducibly with a seed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.adapters.package import TaskKind
from loraswap.base_model.loading import Quantization, _precision_kwargs, load_base_model
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.classify import ClassificationRequest
from loraswap.service.engine.engine import GPU_KV_FRACTION, EngineConfig, LoraEngine
from loraswap.service.engine.observer import NullObserver
from loraswap.service.engine.paged_attention import StepChunk
from loraswap.service.engine.requests import GenerationRequest
from loraswap.service.engine.sampling import SamplingParams
from tests.conftest import AdapterFactory

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12], [40, 41, 42], [70, 71, 72, 73, 74, 75, 76, 77, 78, 79,
                                                       80, 81, 82, 83, 84, 85, 86, 87]]


def _engine(base_dir: Path, quant: Quantization, device: str, **limits: Any) -> LoraEngine:
    loaded = load_base_model(base_dir, quant, device)
    config = EngineConfig(**{"max_loras": 4, "max_lora_rank": 16, "max_batch_size": 8,
                             "max_model_len": 64, "kv_block_size": 4,
                             "kv_cache_bytes": 1 << 22, **limits})
    return LoraEngine(loaded.model, loaded.tokenizer, config, NullObserver())


def _reference(base_dir: Path, quant: Quantization, device: str, adapter: Path | None,
               model_class: Any = AutoModelForCausalLM, **kwargs: Any) -> Any:
    """transformers (+ bitsandbytes for NF4) loading the base as the service does, with the
    PEFT adapter: the reference of one adapter alone."""
    model = model_class.from_pretrained(base_dir, device_map={"": device},
                                        **_precision_kwargs(quant), **kwargs).eval()
    return PeftModel.from_pretrained(model, adapter).eval() if adapter else model


def _step_logits(engine: LoraEngine, prompts: list[list[int]], slots: list[int]) -> torch.Tensor:
    pool = engine.pool
    tables = [pool.allocate(pool.blocks_for(len(p))) or [] for p in prompts]
    try:
        return engine.runner.step([StepChunk(p, 0, t, s) for p, t, s in
                                   zip(prompts, tables, slots, strict=True)]).logits.cpu()
    finally:
        for table in tables:
            pool.release(table)


@pytest.mark.parametrize("quant", [Quantization.BF16, Quantization.NF4])
@pytest.mark.parametrize("device", DEVICES)
async def test_mixed_batch_logits_and_heads_match_transformers_and_peft(
        wide_logits_base_dir: Path, make_adapter: AdapterFactory,
        make_classifier_adapter: Any, device: str, quant: Quantization) -> None:
    base = wide_logits_base_dir
    lm = {"all": make_adapter("dev-all", rank=8, targets=ALL_TARGETS, seed=11),
          "qv": make_adapter("dev-qv", rank=4, targets=("q_proj", "v_proj"), seed=12)}
    sentiment = make_classifier_adapter("dev-sentiment", task="seq-cls", seed=13,
                                        targets=ALL_TARGETS)
    engine = _engine(base, quant, device)
    assert engine.runner.device.type == device and engine.pool.keys.device.type == device
    assert engine.table.shrink("qkv").device.type == device
    engine.table.load(1, read_lora_adapter(lm["all"]))
    engine.table.load(2, read_lora_adapter(lm["qv"]))
    got = _step_logits(engine, PROMPTS, [1, 0, 2])  # adapters and the base in one step
    key = AdapterVersionRef.parse("dev-sentiment@1")
    stream = engine.classify(ClassificationRequest(
        request_id="c", prompt_ids=PROMPTS[2], task=TaskKind.SEQ_CLS,
        adapter=key, adapter_weights=read_lora_adapter(sentiment, "dev-sentiment"),
        fairness_key="t"))
    engine.start()
    try:
        probs = torch.tensor((await asyncio.wait_for(stream.result(), 60)).probs[0])
    finally:
        engine.stop()
    # bf16 compute in both, in a different order (fused q/k/v, batched LoRA): logits spread
    # ~25 here (bf16 steps of 1/16 at 8), so 0.5 is 2%; the adapter moves them by far more.
    tolerance = 0.5
    for row, (adapter, prompt) in enumerate(zip([lm["all"], None, lm["qv"]], PROMPTS,
                                                strict=True)):
        with torch.inference_mode():
            ref = _reference(base, quant, device, adapter)(
                torch.tensor([prompt], device=device)).logits[0, -1].float().cpu()
        assert (got[row] - ref).abs().max() < tolerance, (row, (got[row] - ref).abs().max())
        assert got[row].argmax() == ref.argmax()
    with torch.inference_mode():
        base_row0 = _reference(base, quant, device, None)(
            torch.tensor([PROMPTS[0]], device=device)).logits[0, -1].float().cpu()
    assert (got[0] - base_row0).abs().max() > 4 * tolerance  # the adapter was applied
    classifier = _reference(base, quant, device, sentiment, AutoModelForSequenceClassification,
                            num_labels=probs.shape[0])
    with torch.inference_mode():
        expected = torch.softmax(classifier(torch.tensor([PROMPTS[2]], device=device))
                                 .logits[0].float(), -1).cpu()
    torch.testing.assert_close(probs, expected, atol=2e-2, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_paged_attention_equals_a_contiguous_forward(
        wide_logits_base_dir: Path, make_adapter: AdapterFactory, device: str) -> None:
    """fp32, blocks of 4 tokens: prefill then decode steps over the pool give the logits of
    a cache-free forward pass over each whole sequence (a contiguous attention)."""
    engine = _engine(wide_logits_base_dir, Quantization.FP32, device)
    engine.table.load(1, read_lora_adapter(make_adapter("dev-kv", rank=8, seed=21,
                                                        targets=ALL_TARGETS)))
    slots = [1, 0, 1]
    seqs = [list(p) for p in PROMPTS]
    pool = engine.pool
    tables = [pool.allocate(pool.blocks_for(len(s) + 6)) or [] for s in seqs]
    chunks = [StepChunk(s, 0, t, slot) for s, t, slot in zip(seqs, tables, slots, strict=True)]
    logits = engine.runner.step(chunks).logits
    atol = 1e-5 if device == "cpu" else 1e-4
    for _ in range(5):  # decodes cross block boundaries (4-token blocks)
        for seq, row in zip(seqs, logits.argmax(-1).tolist(), strict=True):
            seq.append(row)
        logits = engine.runner.step([StepChunk([s[-1]], len(s) - 1, t, slot) for s, t, slot
                                     in zip(seqs, tables, slots, strict=True)]).logits
        normed = engine.runner.encode(seqs, slots)
        with torch.inference_mode():
            full = engine.runner.model.lm_head(torch.stack(
                [normed[i, len(s) - 1] for i, s in enumerate(seqs)])).float()
        torch.testing.assert_close(logits, full, atol=atol, rtol=1e-5)


@contextmanager
def _no_host_sync(device: str) -> Iterator[None]:
    """Fail on any device-to-host read: CUDA's own sync check on a GPU; on a CPU, the
    tensor methods that would synchronise there."""
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a host-device synchronisation inside the layer loop")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "cpu", "__bool__", "__int__", "__float__", "numpy"):
            patch.setattr(torch.Tensor, name, refuse)
        yield


@pytest.mark.parametrize("device", DEVICES)
def test_no_host_sync_inside_the_layer_loop(wide_logits_base_dir: Path,
                                            make_adapter: AdapterFactory, device: str) -> None:
    engine = _engine(wide_logits_base_dir, Quantization.BF16, device)
    engine.table.load(1, read_lora_adapter(make_adapter("dev-sync", rank=4, seed=31,
                                                        targets=ALL_TARGETS)))
    runner = engine.runner
    forward = runner._forward
    calls: list[int] = []

    def guarded(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        with _no_host_sync(device):
            return forward(*args, **kwargs)

    runner._forward = guarded  # type: ignore[method-assign]
    _step_logits(engine, PROMPTS, [1, 0, 1])  # prefill chunks and the LoRA plan
    pool = engine.pool
    table = pool.allocate(pool.blocks_for(9)) or []
    runner.step([StepChunk(PROMPTS[0], 0, table, 1)])
    runner.step([StepChunk([3], len(PROMPTS[0]), table, 1)])  # a decode step
    assert len(calls) == 3


@pytest.mark.parametrize("device", DEVICES)
async def test_sampled_requests_run_on_the_device_and_repeat_with_a_seed(
        wide_logits_base_dir: Path, device: str) -> None:
    engine = _engine(wide_logits_base_dir, Quantization.BF16, device)
    params = SamplingParams(max_new_tokens=12, temperature=1.5, top_p=0.95, top_k=50,
                            seed=7, ignore_eos=True)
    engine.start()
    try:
        runs = [await engine.submit(GenerationRequest(
            request_id=f"s{i}", prompt_ids=PROMPTS[0], params=params)).collect()
            for i in range(2)]
    finally:
        engine.stop()
    assert runs[0].completion_tokens == 12 and runs[0].error is None
    assert runs[0].token_ids == runs[1].token_ids


@pytest.mark.gpu
def test_kv_pool_default_on_the_gpu_is_a_share_of_the_free_memory(
        wide_logits_base_dir: Path) -> None:
    loaded = load_base_model(wide_logits_base_dir, Quantization.BF16, "cuda")
    config = EngineConfig(max_loras=2, max_model_len=64)
    engine = LoraEngine(loaded.model, loaded.tokenizer, config, NullObserver())
    free, _ = torch.cuda.mem_get_info()
    held = engine.pool.num_bytes
    # Taken after the weights and the slot table: what is free now is what was left then,
    # less the pool itself.
    assert held <= GPU_KV_FRACTION * (free + held) * 1.01
    assert held >= GPU_KV_FRACTION * (free + held) * 0.95
    assert engine.pool.keys.device.type == "cuda"
