"""Per-request sampling parameters and next-token selection for a batch of rows.

One row's trouble stays in its row: :func:`sample_rows` reports a row whose logits are not
finite, or whose sampling fails, as that row's error, so the scheduler fails that request
alone and every other request of the batch goes on.

:func:`chosen_logprobs` gives each chosen token's log-probability (a drift signal, see
``docs/drift.md``): the natural log of its probability under the model's own distribution,
``log_softmax`` of the raw logits row (temperature 1, no top-p), whatever the request's
sampling parameters. One ``logsumexp`` per row per step, over logits the step already has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loraswap.core.errors import InvalidRequestError, LoraswapError
from loraswap.service.engine.detokenizer import MAX_STOP_CHARS
from loraswap.service.errors import RowFailedError

GREEDY_BELOW = 1e-4
"""Temperatures below this are greedy decoding: dividing logits by a tiny positive
temperature overflows float32, and the distribution it asks for is argmax anyway."""

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
        longest = max((len(s) for s in self.stop), default=0)
        if longest > MAX_STOP_CHARS:
            raise InvalidRequestError(
                f"a stop string has {longest} characters; at most {MAX_STOP_CHARS} are allowed")

    @property
    def greedy(self) -> bool:
        """Temperature 0 (or below :data:`GREEDY_BELOW`) is argmax decoding, which ignores
        top_p and seed."""
        return self.temperature < GREEDY_BELOW


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
        # Shift by the maximum first: the scaled logits are then <= 0, so no temperature
        # can overflow them (the largest is exactly 0, so the softmax has a positive mass).
        scaled = (logits.float() - logits.max()) / self.params.temperature
        probs = torch.softmax(scaled, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            cumulative = sorted_probs.cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            keep = cumulative - sorted_probs < self.params.top_p
            sorted_probs = sorted_probs * keep
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))


def sample_rows(logits: torch.Tensor, samplers: list[TokenSampler | None],
                ) -> list[int | LoraswapError]:
    """Next token for each row, or that row's error; rows with no sampler (empty cache rows)
    get -1.

    Greedy rows share one batched argmax; only sampled rows pay for a softmax. A row whose
    logits are not all finite (an adapter with huge weights, a numerical fault) fails alone.
    """
    greedy = logits.argmax(dim=-1).tolist()
    finite = torch.isfinite(logits).all(dim=-1).tolist()
    tokens: list[int | LoraswapError] = []
    for row, sampler in enumerate(samplers):
        if sampler is None:
            tokens.append(-1)
        elif not finite[row]:
            tokens.append(RowFailedError(
                "the model produced non-finite logits for this request; it was stopped"))
        elif sampler.params.greedy:
            tokens.append(int(greedy[row]))
        else:
            tokens.append(_sample_one(sampler, logits[row]))
    return tokens


def _sample_one(sampler: TokenSampler, logits: torch.Tensor) -> int | LoraswapError:
    try:
        return sampler.sample(logits)
    except (RuntimeError, ValueError) as exc:  # torch raises these for invalid distributions
        return RowFailedError(f"sampling failed for this request: {exc}")


def chosen_logprobs(logits: torch.Tensor, tokens: list[int | LoraswapError]) -> list[float]:
    """``log_softmax(logits[row])[token]`` for each row (NaN for rows without a token).

    A monitoring figure, never a reason to fail a request: if computing it fails, every
    row gets NaN and the tokens stand.
    """
    index = [t if isinstance(t, int) and t >= 0 else -1 for t in tokens]
    try:
        rows = torch.tensor(index, dtype=torch.long, device=logits.device)
        picked = logits.gather(1, rows.clamp(min=0)[:, None])[:, 0].float()
        values: list[float] = (picked - torch.logsumexp(logits.float(), dim=-1)).tolist()
    except (RuntimeError, ValueError):
        return [float("nan")] * len(tokens)
    return [v if i >= 0 else float("nan") for v, i in zip(values, index, strict=True)]
