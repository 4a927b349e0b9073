"""Forward pass of a Llama-style base model with per-sequence LoRA slots and a paged KV cache.

The runner re-uses the loaded Hugging Face model's modules (embedding, norms, projections,
rotary embedding, head), so a bitsandbytes 4-bit or 8-bit base runs unchanged, but it owns
the batching: a step is a flat list of tokens from many sequences (decodes and prompt
chunks), each with its own positions, block table and adapter slot (see
``paged_attention.py``). Plain (unquantized) q/k/v and gate/up weights are fused into one GEMM
each; the original modules keep views into the fused tensors, so nothing is duplicated.

The families served (:data:`loraswap.base_model.families.SUPPORTED_MODEL_TYPES`) share the Llama
decoder block and differ only in what lives inside modules the runner calls anyway, plus
two things it handles itself: q/k/v biases (Qwen2; fused with the weights) and per-head
RMS norms of queries and keys before the rotary embedding (Qwen3). Gemma's scaled
embedding and ``1 + weight`` norms are its modules' own forward.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from loraswap.base_model.families import check_model_config
from loraswap.service.engine.kv_pool import KvBlockPool
from loraswap.service.engine.lora_slots import LoraBatchPlan, LoraSlotTable, ProjectionGroup
from loraswap.service.engine.observer import EngineObserver, NullObserver, StepKind
from loraswap.service.engine.paged_attention import PagedStep, StepChunk

# Per-step attention: writes the new keys/values into the cache and attends.
_Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

ATTENTION_MEMBERS = ("q_proj", "k_proj", "v_proj")
MLP_MEMBERS = ("gate_proj", "up_proj")


class FusedProjection:
    """Projections sharing one input, computed as one output ``[rows, sum(out)]``."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self._modules = modules
        self._weight: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None
        # Subclasses (bitsandbytes Linear4bit, Linear8bitLt) keep their own forward.
        if all(type(m) is nn.Linear for m in modules):
            linears = cast(list[nn.Linear], modules)
            self._weight = _fuse(linears, "weight")
            if any(linear.bias is not None for linear in linears):
                self._bias = _fuse(linears, "bias")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._weight is not None:
            return F.linear(x, self._weight, self._bias)
        outputs = [m(x) for m in self._modules]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)


def _fuse(linears: list[nn.Linear], name: str) -> torch.Tensor:
    """Concatenate the linears' ``weight`` or ``bias`` (a missing bias counts as zeros); each
    module then holds a view into the result, so nothing is stored twice."""
    parts = []
    for linear in linears:
        part = getattr(linear, name)
        rows = int(linear.weight.shape[0])
        parts.append(part.detach() if part is not None else linear.weight.new_zeros(rows))
    fused = torch.cat(parts).contiguous()
    start = 0
    for linear, part in zip(linears, parts, strict=True):
        rows = part.shape[0]
        setattr(linear, name, nn.Parameter(fused[start : start + rows], requires_grad=False))
        start += rows
    return fused


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of the base model the engine needs."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int


def model_shape(model: Any) -> ModelShape:
    """Read the dimensions of a causal LM of a supported family, refusing anything else."""
    config = model.config
    check_model_config(config)
    heads = config.num_attention_heads
    return ModelShape(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_heads=heads,
        num_kv_heads=config.num_key_value_heads or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
    )


def projection_groups(shape: ModelShape) -> list[ProjectionGroup]:
    """The four input-sharing projection groups of a Llama decoder layer."""
    q_out, kv_out = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    hidden, inter = shape.hidden_size, shape.intermediate_size
    return [
        ProjectionGroup("qkv", ATTENTION_MEMBERS, hidden, (q_out, kv_out, kv_out)),
        ProjectionGroup("o", ("o_proj",), q_out, (hidden,)),
        ProjectionGroup("gate_up", MLP_MEMBERS, hidden, (inter, inter)),
        ProjectionGroup("down", ("down_proj",), inter, (hidden,)),
    ]


@dataclass(frozen=True)
class StepOutput:
    """What a step gives back: float32 logits of each chunk's last token ``[chunks, vocab]``,
    and for each chunk that asked (``hidden_from``), the final-normed hidden states of its
    prompt tokens (float32 ``[tokens, hidden]``): ``training/profile.py`` stores their mean
    as ``embedding_served`` (adapter applied, as served), from this same forward pass."""

    logits: torch.Tensor
    hidden: list[torch.Tensor | None]


class LlamaRunner:
    """Runs steps of mixed prefill chunks and decodes over the paged KV cache, with a LoRA
    slot per sequence.

    Every step is timed (``clock``) and reported to ``observer`` with its real tokens, so
    ``/metrics`` shows where the time goes on the machine at hand.
    """

    def __init__(self, model: Any, slots: LoraSlotTable, pool: KvBlockPool,
                 observer: EngineObserver | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        # ``model`` is a transformers causal LM of a supported family (untyped, hence Any).
        self.model = model
        self._observer = observer or NullObserver()
        self._clock = clock
        self.shape = model_shape(model)
        self.slots = slots
        self.pool = pool
        decoder = model.model
        self._embed = decoder.embed_tokens
        self._norm = decoder.norm
        self._rotary = decoder.rotary_emb
        self._head = model.lm_head
        self._layers = list(decoder.layers)
        self._qkv = [FusedProjection([getattr(layer.self_attn, m) for m in ATTENTION_MEMBERS])
                     for layer in self._layers]
        self._o = [FusedProjection([layer.self_attn.o_proj]) for layer in self._layers]
        self._gate_up = [FusedProjection([getattr(layer.mlp, m) for m in MLP_MEMBERS])
                         for layer in self._layers]
        self._down = [FusedProjection([layer.mlp.down_proj]) for layer in self._layers]
        # Qwen3: RMS norms over each head's queries and keys, before the rotary embedding.
        self._qk_norms = [(getattr(layer.self_attn, "q_norm", None),
                           getattr(layer.self_attn, "k_norm", None)) for layer in self._layers]
        self.dtype: torch.dtype = self._embed.weight.dtype
        self.device: torch.device = self._embed.weight.device

    def _padded(self, prompts: list[list[int]],
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded tokens, positions, causal mask over real keys, and lengths."""
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        width = int(lengths.max())
        tokens = torch.zeros((len(prompts), width), dtype=torch.long, device=self.device)
        for i, prompt in enumerate(prompts):
            tokens[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        positions = torch.arange(width, device=self.device).expand(len(prompts), width)
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        key_valid = positions < lengths[:, None]
        mask = (causal[None] & key_valid[:, None, :])[:, None]
        return tokens, positions, mask, lengths

    @torch.inference_mode()
    def encode(self, prompts: list[list[int]], slots: list[int],
               bidirectional: list[bool] | None = None) -> torch.Tensor:
        """Final-normed hidden states ``[prompts, max_len, hidden]`` of whole prompts.

        The prefill forward with each prompt's LoRA slot, but attention runs on the step's
        own keys and values: nothing is written to the KV cache, so a prompt-only request
        (classification) needs no cache row. Positions past a prompt's length are padding.
        Rows flagged in ``bidirectional`` attend to every real token of their prompt, not
        only to earlier ones.
        """
        tokens, positions, mask, lengths = self._padded(prompts)
        if bidirectional is not None and any(bidirectional):
            rows = torch.tensor(bidirectional, dtype=torch.bool, device=self.device)
            key_valid = (positions < lengths[:, None])[:, None, None, :]
            mask = torch.where(rows[:, None, None, None], key_valid, mask)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        row_slots = torch.tensor(slots, dtype=torch.long).repeat_interleave(tokens.shape[1])
        with self._timed("encode", sum(len(p) for p in prompts)):
            hidden = self._forward(tokens, positions, attend, self.slots.plan(row_slots))
            normed: torch.Tensor = self._norm(hidden)
            return normed

    @torch.inference_mode()
    def step(self, chunks: list[StepChunk], hidden_until: list[int] | None = None,
             ) -> StepOutput:
        """Run ``chunks`` (single-token decodes first) through the model in one pass, writing
        their keys and values into the pool; the last token's logits of each chunk, and for
        a chunk ``i`` with ``hidden_until[i] > start`` the normed hidden states of its
        positions below ``hidden_until[i]`` (its prompt tokens)."""
        paged = PagedStep(chunks, self.pool.block_size, self.device)
        lengths = [len(c.tokens) for c in chunks]
        tokens = torch.tensor([t for c in chunks for t in c.tokens], dtype=torch.long)
        row_slots = torch.tensor([c.slot for c in chunks], dtype=torch.long).repeat_interleave(
            torch.tensor(lengths))
        keys, values = self.pool.keys, self.pool.values

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return paged.attend(keys[layer], values[layer], q, k, v)

        kind: StepKind = "decode" if paged.num_decode == len(chunks) else "prefill"
        with self._timed(kind, len(tokens)):
            hidden = self._forward(tokens.to(self.device)[:, None], paged.positions[:, None],
                                   attend, self.slots.plan(row_slots))[:, 0]
            ends = torch.tensor(lengths).cumsum(0) - 1
            logits = self._logits(hidden[ends.to(self.device)])
            pooled: list[torch.Tensor | None] = []
            first = 0
            for chunk, until in zip(chunks, hidden_until or [0] * len(chunks), strict=True):
                count = min(until, chunk.end) - chunk.start
                pooled.append(self._norm(hidden[first : first + count]).float()
                              if count > 0 else None)
                first += len(chunk.tokens)
            return StepOutput(logits, pooled)

    @contextmanager
    def _timed(self, kind: StepKind, tokens: int) -> Iterator[None]:
        started = self._clock()
        yield
        self._observer.engine_step(kind, self._clock() - started, tokens)

    @torch.inference_mode()
    def head_logits(self, normed: torch.Tensor) -> torch.Tensor:
        """float32 logits of final-normed hidden states (:attr:`StepOutput.hidden`)."""
        logits: torch.Tensor = self._head(normed.to(self.dtype)).float()
        return logits

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self._head(self._norm(hidden)).float()
        return logits

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, attend: _Attend,
                 plan: LoraBatchPlan | None) -> torch.Tensor:
        batch, width = tokens.shape
        shape = self.shape
        hidden: torch.Tensor = self._embed(tokens)
        cos, sin = self._rotary(hidden, positions)
        q_out, kv_out = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
        for index, layer in enumerate(self._layers):
            x = layer.input_layernorm(hidden).reshape(batch * width, -1)
            qkv = self._qkv[index](x)
            if plan is not None:
                plan.add_delta(index, "qkv", x, qkv)
            q, k, v = torch.split(qkv, [q_out, kv_out, kv_out], dim=-1)
            q = q.view(batch, width, shape.num_heads, shape.head_dim).transpose(1, 2)
            k = k.view(batch, width, shape.num_kv_heads, shape.head_dim).transpose(1, 2)
            v = v.view(batch, width, shape.num_kv_heads, shape.head_dim).transpose(1, 2)
            q_norm, k_norm = self._qk_norms[index]
            if q_norm is not None and k_norm is not None:
                q, k = q_norm(q), k_norm(k)  # over head_dim, the last axis either way
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            attn = attend(index, q, k, v).transpose(1, 2).reshape(batch * width, q_out)
            out = self._o[index](attn)
            if plan is not None:
                plan.add_delta(index, "o", attn, out)
            hidden = hidden + out.view(batch, width, -1)
            x = layer.post_attention_layernorm(hidden).reshape(batch * width, -1)
            gate_up = self._gate_up[index](x)
            if plan is not None:
                plan.add_delta(index, "gate_up", x, gate_up)
            gate, up = gate_up.chunk(2, dim=-1)
            mixed: torch.Tensor = layer.mlp.act_fn(gate) * up
            down = self._down[index](mixed)
            if plan is not None:
                plan.add_delta(index, "down", mixed, down)
            hidden = hidden + down.view(batch, width, -1)
        return hidden


