"""Attention over the paged KV cache: gather a step's keys and values, then SDPA.

A step runs a flat list of tokens from several sequences (one token for each decoding
sequence, a chunk of prompt for each prefilling one); every projection works on that flat
list, and only attention needs to know which tokens belong together. :class:`PagedStep`
computes, once per step, where each new token's key and value go in the pool and which
pool slots each sequence attends to, as index tensors on the pool's device; each layer then
does one ``index_copy_`` (write), one ``index_select`` per group (read) and
``scaled_dot_product_attention``: the same portable code on CPU and GPU, with no host-device
synchronisation inside the layer loop.

Decoding sequences are attended together (one query each, keys padded to the longest
context and masked); each prefilling chunk is attended alone (its queries against its
context, causal), so a long chunk never pads the decodes of the same step. A padded key
reads the sequence's own position 0, a slot it has written: a pool block is uninitialized
memory until written, and a masked NaN would still poison SDPA's weighted sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias


@dataclass(frozen=True)
class StepChunk:
    """One sequence's part of a step: ``tokens`` at positions ``start..start+len-1``.

    ``blocks`` is its block table and covers every position up to the last of the chunk;
    ``slot`` its LoRA slot. Positions before ``start`` are already in the cache.
    """

    tokens: list[int]
    start: int
    blocks: list[int]
    slot: int

    @property
    def end(self) -> int:
        """Position after the chunk's last token (the sequence's context length)."""
        return self.start + len(self.tokens)


def _slots_of(blocks: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """Pool slots of positions ``0..length-1`` for block tables ``blocks`` ``[rows, n]``."""
    positions = torch.arange(length, device=blocks.device)
    return blocks[:, positions // block_size] * block_size + positions % block_size


class PagedStep:
    """The index tensors of one step, and attention of one layer with them."""

    def __init__(self, chunks: list[StepChunk], block_size: int, device: torch.device) -> None:
        # Decoding chunks (one token) come first in the flat token list: their queries are
        # then a view, not a gather.
        self.num_decode = sum(1 for c in chunks if len(c.tokens) == 1)
        if any(len(c.tokens) == 1 for c in chunks[self.num_decode:]):
            raise ValueError("single-token chunks must come first")
        widest = max(len(c.blocks) for c in chunks)
        # A row pads its table with its first block: padded positions read position 0.
        tables = torch.tensor([c.blocks + [c.blocks[0]] * (widest - len(c.blocks))
                               for c in chunks], dtype=torch.long)
        positions = torch.cat([torch.arange(c.start, c.end) for c in chunks])
        owner = torch.cat([torch.full((len(c.tokens),), i, dtype=torch.long)
                           for i, c in enumerate(chunks)])
        write = tables[owner, positions // block_size] * block_size + positions % block_size
        self.positions = positions.to(device)
        self.write = write.to(device)
        self._reads: list[tuple[torch.Tensor, torch.Tensor]] = []  # (slots, mask) per group
        self._spans: list[tuple[int, int]] = []  # flat token range of each group
        if self.num_decode:
            decode = chunks[: self.num_decode]
            context = max(c.end for c in decode)
            lengths = torch.tensor([c.end for c in decode])
            valid = torch.arange(context)[None, :] < lengths[:, None]
            slots = _slots_of(tables[: self.num_decode], context, block_size)
            slots = torch.where(valid, slots, slots[:, :1])
            self._reads.append((slots.to(device), valid[:, None, None, :].to(device)))
            self._spans.append((0, self.num_decode))
        offset = self.num_decode
        for index in range(self.num_decode, len(chunks)):
            chunk = chunks[index]
            slots = _slots_of(tables[index : index + 1], chunk.end, block_size)
            query_at = torch.arange(chunk.start, chunk.end)
            causal = torch.arange(chunk.end)[None, :] <= query_at[:, None]
            self._reads.append((slots.to(device), causal[None, None].to(device)))
            self._spans.append((offset, offset + len(chunk.tokens)))
            offset += len(chunk.tokens)

    def attend(self, keys: torch.Tensor, values: torch.Tensor, q: torch.Tensor,
               k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write this layer's new ``k``/``v`` into ``keys``/``values`` (one layer of the
        pool, ``[slots, kv_heads, head_dim]``) and attend; ``q``/``k``/``v`` are
        ``[tokens, heads, 1, head_dim]`` and so is the result."""
        keys.index_copy_(0, self.write, k[:, :, 0])
        values.index_copy_(0, self.write, v[:, :, 0])
        outputs: list[torch.Tensor] = []
        for (slots, mask), (first, last) in zip(self._reads, self._spans, strict=True):
            rows, context = slots.shape
            gathered_k = keys.index_select(0, slots.reshape(-1))
            gathered_v = values.index_select(0, slots.reshape(-1))
            gathered_k = gathered_k.view(rows, context, *keys.shape[1:]).transpose(1, 2)
            gathered_v = gathered_v.view(rows, context, *keys.shape[1:]).transpose(1, 2)
            decodes = first == 0 and last == self.num_decode
            # Decodes: one query per row [rows, heads, 1, dim]; a prefill chunk: one row
            # of many queries [1, heads, tokens, dim], permuted there and back.
            query = q[first:last] if decodes else q[first:last].permute(2, 1, 0, 3)
            out = F.scaled_dot_product_attention(query, gathered_k, gathered_v,
                                                 attn_mask=mask, enable_gqa=True)
            outputs.append(out if decodes else out.permute(2, 1, 0, 3))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
