"""Decode step time on one device against its bandwidth floor (the GPU check's measurements).

A decode step of a batch reads every weight of the model once, the LoRA factors of the
slots its rows use and the keys and values of every sequence's context: at best it takes
``(weight bytes + LoRA bytes + KV bytes) / memory bandwidth``, the bandwidth being what a
device-to-device copy reaches in the same run. The engine is stepped here as its thread
steps it (``scheduler.step()``: plan, forward, sampling, events), timed from a synchronised
device to the step's end (sampling reads the tokens back, which waits for the device).
The forward's own timer (``engine_step``) is kept too: on a GPU it is the CPU time to
launch the step's kernels, the overhead the issue asks to see at small batch.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from loraswap.adapters.lora_format import LoraAdapterWeights, LoraConfigSummary
from loraswap.core.identity import AdapterRef, AdapterVersionRef, Version
from loraswap.service.engine.engine import EngineConfig, LoraEngine
from loraswap.service.engine.lora_slots import LoraSlotTable
from loraswap.service.engine.observer import NullObserver, StepKind
from loraswap.service.engine.requests import GenerationRequest
from loraswap.service.engine.sampling import SamplingParams

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FACTOR_SETS = 2  # distinct random factor sets, shared round-robin by the adapters


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, num_bytes: int, repeats: int = 10) -> float:
    """Bytes per second a device-to-device copy of ``num_bytes`` moves (read + write), best
    of ``repeats`` after a warm-up."""
    source = torch.empty(num_bytes, dtype=torch.uint8, device=device).fill_(1)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    del source, target
    return 2 * num_bytes / best


def random_adapters(table: LoraSlotTable, count: int, rank: int) -> list[LoraAdapterWeights]:
    """``count`` rank-``rank`` adapters on all seven projections of every layer, drawn once
    per factor set (:data:`FACTOR_SETS`): each takes its own slot, so a step reads the
    factors of every adapter its rows use, as with trained ones."""
    shapes = {member: (group.in_features, group.out_features[index])
              for group in table.groups.values()
              for index, member in enumerate(group.members)}
    config = LoraConfigSummary(r=rank, lora_alpha=2.0 * rank, use_rslora=False,
                               target_modules=ALL_PROJECTIONS, task_type="CAUSAL_LM",
                               base_model_name_or_path=None)
    generator = torch.Generator().manual_seed(0)
    sets = []
    for _ in range(min(count, FACTOR_SETS)):
        factors = {}
        for layer in range(table.num_layers):
            for member in ALL_PROJECTIONS:
                fan_in, fan_out = shapes[member]
                lora_a = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
                lora_b = torch.randn(fan_out, rank, generator=generator) * 0.01
                factors[(layer, member)] = (lora_a.to(table.dtype), lora_b.to(table.dtype))
        sets.append(factors)
    return [LoraAdapterWeights(f"bench-{i}", config, sets[i % len(sets)]) for i in range(count)]


class StepKinds(NullObserver):
    """The kind and forward time of the engine's last step."""

    def __init__(self) -> None:
        self.kind: StepKind | None = None
        self.forward_s = 0.0

    def engine_step(self, kind: StepKind, seconds: float, tokens: int) -> None:
        self.kind, self.forward_s = kind, seconds


@dataclass(frozen=True)
class DecodeRun:
    """One measured configuration: its sizes, times and the floor they compare to."""

    model: str
    precision: str
    adapters: int
    batch: int
    distinct_in_batch: int
    steps: int
    step_ms_median: float
    step_ms_p90: float
    forward_launch_ms_median: float
    weight_bytes: int
    lora_bytes: int
    kv_bytes: int
    floor_ms: float
    ratio_to_floor: float
    tokens_per_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class DecodeSizes:
    """How one scenario is run."""

    prompt_tokens: int
    warm_steps: int
    steps: int
    rank: int = 16


def make_engine(model: Any, tokenizer: Any, adapters: int, sizes: DecodeSizes,
                observer: NullObserver) -> LoraEngine:
    """An engine as the service builds it (the KV pool at its default budget), batch 32;
    ``max_model_len`` a whole number of blocks, so the CPU default pool holds 32 of them."""
    longest = sizes.prompt_tokens + sizes.warm_steps + sizes.steps + 2
    block = EngineConfig.kv_block_size
    config = EngineConfig(
        max_loras=max(1, adapters), max_lora_rank=sizes.rank, max_cpu_loras=max(64, adapters),
        max_batch_size=32, max_model_len=-(-longest // block) * block,
        max_prefill_tokens=32 * sizes.prompt_tokens, max_queue=256)
    return LoraEngine(model, tokenizer, config, observer)


def _key(weights: LoraAdapterWeights) -> AdapterVersionRef:
    return AdapterRef(None, weights.name).at(Version.of(1))


def preload(engine: LoraEngine, adapters: list[LoraAdapterWeights]) -> None:
    """Make every adapter resident, adapter ``i`` in slot ``i + 1`` (a busy replica holds
    all of them; a batch's rows then use slots spread over the whole table)."""
    for weights in adapters:
        slot = engine.slots.acquire(_key(weights), weights)
        if slot is None:
            raise RuntimeError("the slot table is smaller than the adapters to preload")
        engine.slots.release(slot)


def _row_adapters(count: int, batch: int) -> list[int | None]:
    """The adapter index of each row (None: the base), spread evenly over ``count``."""
    return [row * count // batch if count else None for row in range(batch)]


def _requests(adapters: list[LoraAdapterWeights], batch: int, sizes: DecodeSizes,
              vocab: int) -> list[GenerationRequest]:
    generator = torch.Generator().manual_seed(batch)
    # Two more than measured: the step that ends the requests runs a shrinking batch.
    params = SamplingParams(max_new_tokens=sizes.warm_steps + sizes.steps + 2, ignore_eos=True)
    requests = []
    for row, index in enumerate(_row_adapters(len(adapters), batch)):
        weights = adapters[index] if index is not None else None
        prompt = torch.randint(2, vocab, (sizes.prompt_tokens,), generator=generator).tolist()
        requests.append(GenerationRequest(
            request_id=f"b{batch}-{row}", prompt_ids=prompt, params=params,
            adapter=_key(weights) if weights is not None else None, adapter_weights=weights,
            fairness_key=f"t{row}"))
    return requests


def _lora_bytes(table: LoraSlotTable, count: int, batch: int) -> int:
    """Bytes of the slot table's factors one step reads: the slots from the lowest to the
    highest its rows use (the LoRA plan's range), adapters preloaded by :func:`preload`."""
    used = [index for index in _row_adapters(count, batch) if index is not None]
    if not used:
        return 0
    per_slot = table.num_bytes // (table.max_loras + 1)
    return (max(used) - min(used) + 1) * per_slot


def measure_decode(engine: LoraEngine, kinds: StepKinds, adapters: list[LoraAdapterWeights],
                   batch: int, sizes: DecodeSizes, bandwidth: float, weight_bytes: int,
                   labels: tuple[str, str]) -> DecodeRun:
    """Run ``batch`` requests (rows spread over ``adapters``) and time the decode steps that
    follow the warm-up, stepping the scheduler on this thread as the engine thread would."""
    device = engine.runner.device
    requests = _requests(adapters, batch, sizes, engine.runner.shape.vocab_size)
    loop = asyncio.new_event_loop()

    async def submit() -> None:
        for request in requests:
            engine.submit(request)

    try:
        loop.run_until_complete(submit())
        times: list[float] = []
        launches: list[float] = []
        decodes = 0
        while engine.scheduler.num_running or engine.scheduler.num_waiting:
            synchronize(device)
            started = time.perf_counter()
            engine.scheduler.step()
            elapsed = time.perf_counter() - started
            if kinds.kind != "decode" or engine.scheduler.num_running < batch:
                continue
            decodes += 1
            if sizes.warm_steps < decodes <= sizes.warm_steps + sizes.steps:
                times.append(elapsed)
                launches.append(kinds.forward_s)
    finally:
        loop.close()
    if not times:
        raise RuntimeError(f"no decode step of batch {batch} was measured")
    # Decode step k after the prefill attends to prompt + k tokens per sequence: the mean
    # context of the measured steps, and the keys and values it reads.
    context = sizes.prompt_tokens + sizes.warm_steps + (len(times) + 1) / 2
    kv_bytes = int(batch * context * engine.pool.layout.bytes_per_token)
    lora_bytes = _lora_bytes(engine.table, len(adapters), batch)
    median = statistics.median(times)
    floor = (weight_bytes + lora_bytes + kv_bytes) / bandwidth
    return DecodeRun(
        model=labels[0], precision=labels[1], adapters=len(adapters), batch=batch,
        distinct_in_batch=len({r.adapter for r in requests if r.adapter is not None}),
        steps=len(times), step_ms_median=1e3 * median,
        step_ms_p90=1e3 * sorted(times)[int(0.9 * (len(times) - 1))],
        forward_launch_ms_median=1e3 * statistics.median(launches),
        weight_bytes=weight_bytes, lora_bytes=lora_bytes, kv_bytes=kv_bytes,
        floor_ms=1e3 * floor, ratio_to_floor=median / floor, tokens_per_s=batch / median)
