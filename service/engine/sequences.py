"""What the scheduler works with: its limits and its generation sequences."""

from __future__ import annotations

from dataclasses import dataclass, field

from loraswap.service.engine.detokenizer import IncrementalText
from loraswap.service.engine.logits import TokenLogprob
from loraswap.service.engine.requests import GenerationRequest, RequestStream
from loraswap.service.engine.sampling import TokenSampler


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of the running batch and the waiting queue."""

    max_batch_size: int
    max_model_len: int
    max_prefill_tokens: int
    max_queue: int
    stop_token_ids: frozenset[int]
    # Most requests one fairness key (tenant) may have waiting: one tenant's burst leaves
    # the rest of the queue to the others.
    max_queue_per_key: int | None = None

    @property
    def queue_share(self) -> int:
        """Waiting requests allowed per fairness key."""
        share = self.max_queue if self.max_queue_per_key is None else self.max_queue_per_key
        return min(share, self.max_queue)


@dataclass
class GenerationSequence:
    """A generation request in the scheduler: waiting, then running in a cache row."""

    request: GenerationRequest
    stream: RequestStream
    sampler: TokenSampler
    text: IncrementalText
    slot: int = 0
    row: int = -1
    output_ids: list[int] = field(default_factory=list)
    # Drift hooks: each output token's log-probability, the prompt's pooled hidden state.
    logprobs: list[float] = field(default_factory=list)
    embedding: list[float] | None = None
    # The prompt's log-probabilities (echo), sent with the first event and then dropped.
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    last_token_at: float = 0.0
    done: bool = False

    @property
    def next_position(self) -> int:
        """Cache position of the token fed at the next decode step."""
        return len(self.request.prompt_ids) + len(self.output_ids) - 1
