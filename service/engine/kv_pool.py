"""The paged KV cache: one pool of fixed-size blocks per device, and its prefix cache.

Keys and values live in ``[layers, blocks * block_size, kv_heads, head_dim]`` tensors; a
sequence owns a *block table* (a list of block ids) and its token at position ``p`` sits in
slot ``table[p // block_size] * block_size + p % block_size``. Memory is taken per block as
a sequence grows, not ``max_model_len`` per batch row: at the defaults 32 requests of 64
tokens hold 128 blocks (2,048 token slots), where the old per-row cache reserved 65,536.

Prefix cache: a full block of prompt tokens is registered under a chained SHA-256 of its
*scope* (tenant, adapter name and version), the previous block's key and its tokens. A later
prompt in the same scope whose first blocks have the same tokens takes those blocks instead
of recomputing them. The scope is part of every key, so a block computed under one adapter,
one version of it, or for one tenant never serves another: LoRA on k/v changes the cache,
and shared blocks would let a tenant learn from its latency what another one sent. A block
whose last user is gone stays cached (LRU) until an allocation needs its room.

All of this runs on the engine thread; the counters are plain ints that the metrics
collector may read from another thread (a stale read is harmless).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import torch

BlockKey = bytes
"""Chained digest naming a full block's content in its scope."""


@dataclass(frozen=True)
class KvLayout:
    """The dimensions of one token's keys and values across layers."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        """Keys plus values of one token over all layers."""
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element


def block_keys(scope: str, tokens: list[int], block_size: int, count: int) -> list[BlockKey]:
    """Keys of the first ``count`` full blocks of ``tokens`` in ``scope``."""
    keys: list[BlockKey] = []
    parent = hashlib.sha256(scope.encode()).digest()
    for index in range(count):
        chunk = array("q", tokens[index * block_size : (index + 1) * block_size])
        parent = hashlib.sha256(parent + chunk.tobytes()).digest()
        keys.append(parent)
    return keys


class KvBlockPool:
    """Fixed-size KV blocks with reference counts, a free list and an LRU of cached blocks.

    A block is *free* (on the free list), *used* (referenced by at least one sequence), or
    *cached* (no reference, but holding a registered prefix; evicted first-in-LRU-order when
    an allocation finds the free list empty). Allocation is all or nothing.
    """

    def __init__(self, layout: KvLayout, num_blocks: int, block_size: int,
                 device: torch.device) -> None:
        if num_blocks < 1:
            raise ValueError("the KV pool needs at least one block")
        self.layout = layout
        self.block_size = block_size
        self.num_blocks = num_blocks
        size = (layout.num_layers, num_blocks * block_size, layout.num_kv_heads,
                layout.head_dim)
        # Uninitialized on purpose: attention never reads a slot its sequence has not
        # written (see runner.py), and on a CPU untouched pages of a large allocation are
        # not backed by memory until a block is first used.
        self.keys = torch.empty(size, dtype=layout.dtype, device=device)
        self.values = torch.empty(size, dtype=layout.dtype, device=device)
        # Lowest ids first: a lightly loaded pool keeps touching the same memory.
        self._free = list(range(num_blocks - 1, -1, -1))
        self._refs = [0] * num_blocks
        self._key_of: dict[int, BlockKey] = {}
        self._block_of: dict[BlockKey, int] = {}
        self._sums: dict[int, torch.Tensor] = {}  # block -> sum of its normed hidden states
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced
        self.used = 0
        self.prefix_queries = 0  # prompt blocks looked up
        self.prefix_hits = 0  # of which found

    @property
    def num_bytes(self) -> int:
        """Memory the pool's tensors take."""
        return 2 * self.keys.numel() * self.keys.element_size()

    @property
    def num_cached(self) -> int:
        """Blocks holding a registered prefix that no sequence references."""
        return len(self._evictable)

    def available(self) -> int:
        """Blocks an allocation may take now (free plus evictable cached ones)."""
        return len(self._free) + len(self._evictable)

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold ``tokens`` tokens."""
        return -(-tokens // self.block_size)

    def allocate(self, count: int) -> list[int] | None:
        """``count`` fresh blocks, evicting cached prefixes (least recently used first) if
        the free list is short; None, taking nothing, when the pool cannot give them."""
        if count > self.available():
            return None
        blocks: list[int] = []
        for _ in range(count):
            if not self._free:
                victim, _ = self._evictable.popitem(last=False)
                self._forget(victim)
                self._free.append(victim)
            block = self._free.pop()
            self._refs[block] = 1
            blocks.append(block)
        self.used += count
        return blocks

    def release(self, blocks: list[int]) -> None:
        """Drop one reference to each block; unreferenced ones become free, or evictable
        when they hold a registered prefix."""
        for block in blocks:
            self._refs[block] -= 1
            if self._refs[block] > 0:
                continue
            self.used -= 1
            if block in self._key_of:
                self._evictable[block] = None
            else:
                self._free.append(block)

    def lookup(self, keys: list[BlockKey]) -> list[int]:
        """The longest run of cached blocks matching ``keys`` from the first, each with a
        new reference (the caller releases them like allocated ones)."""
        found: list[int] = []
        for key in keys:
            block = self._block_of.get(key)
            if block is None:
                break
            found.append(block)
        self.prefix_queries += len(keys)
        self.prefix_hits += len(found)
        for block in found:
            if self._refs[block] == 0:
                self._evictable.pop(block, None)
                self.used += 1
            self._refs[block] += 1
        return found

    def register(self, key: BlockKey, block: int, hidden_sum: torch.Tensor) -> None:
        """Name a referenced, fully written ``block`` by ``key`` so later prompts can reuse
        it; ``hidden_sum`` (its tokens' normed hidden states, summed) travels with it for the
        drift embedding. A key already cached elsewhere keeps its block."""
        if key in self._block_of or block in self._key_of:
            return
        self._block_of[key] = block
        self._key_of[block] = key
        self._sums[block] = hidden_sum

    def hidden_sum(self, block: int) -> torch.Tensor:
        """The summed normed hidden states registered with a cached ``block``."""
        return self._sums[block]

    def _forget(self, block: int) -> None:
        key = self._key_of.pop(block)
        del self._block_of[key]
        del self._sums[block]

    def referenced(self) -> list[int]:
        """Blocks some sequence still references (none once every request has ended: the
        leak check of the tests)."""
        return [block for block, refs in enumerate(self._refs) if refs]
