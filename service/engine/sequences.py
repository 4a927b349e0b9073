"""What the scheduler works with: its limits and its generation sequences."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from loraswap.service.engine.detokenizer import IncrementalText
from loraswap.service.engine.logits import TokenLogprob
from loraswap.service.engine.requests import GenerationRequest, RequestStream
from loraswap.service.engine.sampling import TokenSampler


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of the running batch and the waiting queue.

    ``max_prefill_tokens`` is the step's budget of prompt tokens: a longer prompt is
    prefilled in chunks over several steps, each also decoding every running sequence.
    """

    max_batch_size: int
    max_model_len: int
    max_prefill_tokens: int
    max_queue: int
    stop_token_ids: frozenset[int]
    # Most requests one fairness key (tenant) may have waiting: one tenant's burst leaves
    # the rest of the queue to the others.
    max_queue_per_key: int | None = None
    prefix_cache: bool = True
    # While sequences decode, a step prefills at most this many prompt tokens per decoding
    # sequence (at least one block's worth): a step's cost grows with its tokens, so a long
    # prompt arriving mid-stream lengthens each running stream's token gap by about
    # (1 + this) times instead of stalling it for the whole prompt. None: no cap.
    prefill_tokens_per_decode: float | None = None

    def prefill_budget(self, decoding: int, block_size: int) -> int:
        """Prompt tokens this step may prefill while ``decoding`` sequences decode."""
        if not decoding or self.prefill_tokens_per_decode is None:
            return self.max_prefill_tokens
        capped = max(block_size, math.ceil(decoding * self.prefill_tokens_per_decode))
        return min(self.max_prefill_tokens, capped)

    @property
    def queue_share(self) -> int:
        """Waiting requests allowed per fairness key."""
        share = self.max_queue if self.max_queue_per_key is None else self.max_queue_per_key
        return min(share, self.max_queue)


def _first_entry() -> list[TokenLogprob | None] | None:
    """Nothing predicts a prompt's first token: its entry is None."""
    return [None]


@dataclass(eq=False)  # identity: the scheduler finds a sequence in its lists
class GenerationSequence:
    """A generation request in the scheduler: waiting, running (holding KV blocks), or
    preempted (blocks given back, to be recomputed from its prompt and output so far)."""

    request: GenerationRequest
    stream: RequestStream
    sampler: TokenSampler
    text: IncrementalText
    slot: int = 0
    holds_slot: bool = False
    output_ids: list[int] = field(default_factory=list)
    # Drift hooks: each output token's log-probability, the prompt's pooled hidden state.
    logprobs: list[float] = field(default_factory=list)
    embedding: list[float] | None = None
    # The prompt's log-probabilities (echo): gathered chunk by chunk (the first prompt
    # token's is None), then sent with the first event and dropped.
    prompt_entries: list[TokenLogprob | None] | None = field(default_factory=_first_entry)
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    last_token_at: float = 0.0
    done: bool = False
    # The paged KV cache: block table, tokens whose keys and values are in it, admission
    # order (the newest running sequence is preempted first), this step's chunk length.
    blocks: list[int] = field(default_factory=list)
    computed: int = 0
    order: int = 0
    chunk: int = 0
    # Per full or partial prompt block: the sum of its tokens' normed hidden states (the
    # drift embedding, and what the prefix cache keeps with a block); prompt blocks
    # already registered in the prefix cache.
    block_sums: list[torch.Tensor] = field(default_factory=list)
    registered: int = 0

    @property
    def num_tokens(self) -> int:
        """Prompt and output tokens known so far."""
        return len(self.request.prompt_ids) + len(self.output_ids)

    def tokens(self, start: int, stop: int) -> list[int]:
        """Known tokens ``start..stop-1`` (prompt, then output)."""
        prompt, size = self.request.prompt_ids, len(self.request.prompt_ids)
        if stop <= size:
            return prompt[start:stop]
        if start >= size:  # a decode: no copy of the whole sequence per step
            return self.output_ids[start - size : stop - size]
        return prompt[start:] + self.output_ids[: stop - size]

    @property
    def next_position(self) -> int:
        """Cache position of the token fed at the next decode step."""
        return len(self.request.prompt_ids) + len(self.output_ids) - 1
