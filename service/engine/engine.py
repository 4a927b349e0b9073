"""The engine facade: one resident base model serving many LoRA adapters at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from loraswap.adapters.compatibility import check_head
from loraswap.adapters.lora_format import LoraAdapterWeights
from loraswap.base_model.families import stop_token_ids
from loraswap.core.errors import ConfigurationError
from loraswap.core.identity import AdapterRef, AdapterVersionRef
from loraswap.service.engine.classify import ClassificationRequest, ClassificationStream
from loraswap.service.engine.detokenizer import Tokenizer
from loraswap.service.engine.engine_thread import EngineThread
from loraswap.service.engine.fair_queue import QueuePlaces
from loraswap.service.engine.kv_pool import KvBlockPool, KvLayout
from loraswap.service.engine.lora_slots import LoraSlotTable
from loraswap.service.engine.observer import EngineObserver
from loraswap.service.engine.requests import GenerationRequest, RequestStream
from loraswap.service.engine.residency import HostLoraCache, LoraSlotManager
from loraswap.service.engine.runner import LlamaRunner, ModelShape, model_shape, projection_groups
from loraswap.service.engine.scheduler import ContinuousBatchScheduler
from loraswap.service.engine.sequences import SchedulerConfig

T = TypeVar("T")


@dataclass(frozen=True)
class ResidencyView:
    """Which adapter versions are resident on this replica, per tier."""

    in_slots: tuple[AdapterVersionRef, ...]
    in_host_memory: tuple[AdapterVersionRef, ...]


# Share of the GPU memory left after the weights and the slot table that the KV pool takes
# by default (the rest: activations of a step, the allocator's slack).
GPU_KV_FRACTION = 0.85


# Prompt tokens a step prefills per decoding sequence on a CPU by default: measured with
# ``scripts/kv_bench.py stall`` (docs/benchmarks.md), it keeps the running streams' token
# gaps within 2x while a 2,000-token prompt is prefilled beside them.
CPU_PREFILL_TOKENS_PER_DECODE = 1.0


@dataclass(frozen=True)
class EngineConfig:
    """Sizes of the engine's preallocated tables and queues.

    ``kv_cache_bytes``: the KV pool's budget; None takes, on a GPU, a fraction
    (:data:`GPU_KV_FRACTION`) of the memory free once weights and slot table are in, and on
    a CPU what the old per-row cache reserved (``max_batch_size`` × ``max_model_len``
    tokens). Either way the pool must hold one ``max_model_len`` sequence.
    """

    max_loras: int = 16
    max_lora_rank: int = 16
    max_cpu_loras: int = 64
    max_batch_size: int = 32
    max_model_len: int = 2048
    max_prefill_tokens: int = 2048
    max_queue: int = 256
    max_queue_per_tenant: int | None = None
    kv_cache_bytes: int | None = None
    kv_block_size: int = 16
    prefix_cache: bool = True
    # None: 1.0 on a CPU, where a step's time grows with its tokens, and no cap on a GPU,
    # where a decode step is bound by memory and a prompt chunk rides along nearly free.
    prefill_tokens_per_decode: float | None = None


class LoraEngine:
    """Continuous-batching generation, and classification, over a slot table of LoRA adapters."""

    def __init__(self, model: Any, tokenizer: Tokenizer, config: EngineConfig,
                 observer: EngineObserver, thread: EngineThread | None = None) -> None:
        """``thread`` is the thread that loaded ``model``: all torch work stays on it."""
        shape = model_shape(model)
        device = next(model.parameters()).device
        dtype: torch.dtype = model.model.embed_tokens.weight.dtype
        # LoRA factors are held and applied in the activations' dtype (bf16 for an nf4
        # base), as PEFT does. Measured on this CPU: float32 LoRA on a bf16 base was no
        # faster end to end, and doubles the table's memory.
        lora_dtype = dtype
        self.config = config
        self.tokenizer = tokenizer
        self.hidden_size = shape.hidden_size
        self.table = LoraSlotTable(
            num_layers=shape.num_layers, groups=projection_groups(shape),
            max_loras=config.max_loras, max_rank=config.max_lora_rank,
            dtype=lora_dtype, device=device,
        )
        self.pool = self._kv_pool(shape, dtype, device)
        self.runner = LlamaRunner(model, self.table, self.pool, observer)
        self.slots = LoraSlotManager(self.table, observer)
        self._owns_thread = thread is None
        self.thread = thread or EngineThread()
        self.host = HostLoraCache(config.max_cpu_loras, observer, self._run_on_thread)
        self.scheduler = ContinuousBatchScheduler(
            self.runner, self.slots, tokenizer,
            SchedulerConfig(
                max_batch_size=config.max_batch_size, max_model_len=config.max_model_len,
                max_prefill_tokens=config.max_prefill_tokens, max_queue=config.max_queue,
                stop_token_ids=stop_token_ids(model, tokenizer),
                max_queue_per_key=config.max_queue_per_tenant,
                prefix_cache=config.prefix_cache,
                prefill_tokens_per_decode=(
                    config.prefill_tokens_per_decode if config.prefill_tokens_per_decode
                    is not None else CPU_PREFILL_TOKENS_PER_DECODE if device.type == "cpu"
                    else None),
            ),
            observer, pad_token_id=getattr(model.config, "pad_token_id", None),
            wake=self.thread.wake,
        )

    def _kv_pool(self, shape: ModelShape, dtype: torch.dtype,
                 device: torch.device) -> KvBlockPool:
        config, size = self.config, self.config.kv_block_size
        layout = KvLayout(shape.num_layers, shape.num_kv_heads, shape.head_dim, dtype)
        budget = config.kv_cache_bytes
        if budget is None and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = int(free * GPU_KV_FRACTION)
        if budget is None:
            budget = config.max_batch_size * config.max_model_len * layout.bytes_per_token
        num_blocks = budget // (size * layout.bytes_per_token)
        needed = -(-config.max_model_len // size)
        if num_blocks < needed:
            raise ConfigurationError(
                f"the KV cache budget of {budget} bytes holds {num_blocks} blocks of {size} "
                f"tokens; one sequence of max_model_len {config.max_model_len} needs {needed} "
                f"({needed * size * layout.bytes_per_token} bytes): raise "
                "LORASWAP_KV_CACHE_BYTES or lower LORASWAP_MAX_MODEL_LEN")
        return KvBlockPool(layout, num_blocks, size, device)

    def start(self) -> None:
        """Start stepping the scheduler on the engine thread."""
        if not self.thread.started:
            self.thread.start()
        self.thread.drive(self.scheduler)

    def stop(self) -> None:
        """Fail what is still pending; stop the engine thread if this engine made it."""
        if self._owns_thread:
            self.thread.stop()
        elif self.thread.started:
            self.thread.release(self.scheduler)

    async def _run_on_thread(self, fn: Callable[[], T]) -> T:
        if not self.thread.started:  # not serving yet (tests, tools): run inline
            return fn()
        return await self.thread.run(fn)

    async def adapter_weights(
        self, key: AdapterVersionRef, read: Callable[[], LoraAdapterWeights]
    ) -> LoraAdapterWeights:
        """Decoded weights of ``key`` from the host tier, read (and checked) on a miss."""

        def read_checked() -> LoraAdapterWeights:
            weights = read()
            self.table.check_compatible(weights)
            check_head(weights, hidden_size=self.hidden_size)
            return weights

        return await self.host.get(key, read_checked)

    async def pin(self, key: AdapterVersionRef, weights: LoraAdapterWeights) -> bool:
        """Keep ``key`` resident (other versions of its adapter lose their pin) and load it
        into a slot now; False when every slot is busy (it then stays once loaded)."""

        def pin_and_load() -> bool:
            self.slots.pin(key)
            slot = self.slots.acquire(key, weights)
            if slot is None:
                return False
            self.slots.release(slot)
            return True

        return await self.thread.run(pin_and_load)

    async def unpin(self, ref: AdapterRef) -> None:
        """Let adapter ``ref`` be evicted like any other."""
        await self.thread.run(lambda: self.slots.unpin(ref))

    def residency(self) -> ResidencyView:
        """Adapter versions in slots (the slot manager's snapshot) and in host memory
        (owned by the event loop: call this on it)."""
        return ResidencyView(in_slots=self.slots.resident, in_host_memory=tuple(self.host.keys()))

    @property
    def queue_share(self) -> int:
        """Requests one fairness key (tenant) may have waiting."""
        return self.scheduler.config.queue_share

    def reserve(self, key: str, places: int) -> QueuePlaces:
        """Hold ``places`` in the queue for fairness key ``key`` before its requests are
        prepared; :class:`OverloadedError` (429) at once when they do not fit."""
        return self.scheduler.reserve(key, places)

    def submit(self, request: GenerationRequest,
               places: QueuePlaces | None = None) -> RequestStream:
        """Queue ``request`` (in one of ``places``, if given); its events arrive on the
        returned stream."""
        stream = RequestStream(asyncio.get_running_loop())
        self.scheduler.submit(request, stream, places)
        return stream

    def classify(self, request: ClassificationRequest,
                 places: QueuePlaces | None = None) -> ClassificationStream:
        """Queue a classification request; its result arrives on the returned stream."""
        stream = ClassificationStream(asyncio.get_running_loop())
        self.scheduler.submit_classification(request, stream, places)
        return stream

    def cancel(self, stream: RequestStream | ClassificationStream) -> None:
        """Drop a request (client went away)."""
        stream.cancel()
        self.scheduler.withdraw(stream)
        self.scheduler.kick()

    def stats(self) -> dict[str, Any]:
        """Residency and queue figures for ``/readyz``."""
        return {
            "adapters_in_slots": [str(k) for k in self.slots.resident],
            "adapters_in_host_memory": len(self.host),
            "max_loras": self.config.max_loras,
            "max_lora_rank": self.config.max_lora_rank,
            "waiting": self.scheduler.num_waiting,
            "running": self.scheduler.num_running,
            "kv_cache_bytes": self.pool.num_bytes,
            "kv_blocks_total": self.pool.num_blocks,
            "kv_blocks_used": self.pool.used,
            "slot_table_bytes": self.table.num_bytes,
        }
