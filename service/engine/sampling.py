"""Per-request sampling parameters and next-token selection for a batch of rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from adapters.errors import InvalidRequestError


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it stops. Validated at construction."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidRequestError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        """Temperature 0 means argmax decoding, which ignores top_p and seed."""
        return self.temperature == 0


@dataclass
class TokenSampler:
    """Picks one sequence's tokens; owns its random generator so seeds are reproducible."""

    params: SamplingParams
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator()
        if self.params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.params.seed)

    def sample(self, logits: torch.Tensor) -> int:
        """Next token from one row of float32 logits ``[vocab]``."""
        if self.params.greedy:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            cumulative = sorted_probs.cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            keep = cumulative - sorted_probs < self.params.top_p
            sorted_probs = sorted_probs * keep
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))


def sample_rows(logits: torch.Tensor, samplers: list[TokenSampler | None]) -> list[int]:
    """Next token for each row; rows with no sampler (empty cache rows) get -1.

    Greedy rows share one batched argmax; only sampled rows pay for a softmax.
    """
    greedy = logits.argmax(dim=-1).tolist()
    tokens: list[int] = []
    for row, sampler in enumerate(samplers):
        if sampler is None:
            tokens.append(-1)
        elif sampler.params.greedy:
            tokens.append(int(greedy[row]))
        else:
            tokens.append(sampler.sample(logits[row]))
    return tokens
