"""What happens to one row's logits between the model and the sampler, and the
log-probabilities a request may ask for.

The order follows vLLM's sampler (``vllm/v1/sample/sampler.py``), so a request moved from
vLLM gets the same distribution:

1. ``logit_bias`` is added to the raw logits;
2. penalties, as vLLM defines them: ``repetition_penalty`` divides a positive logit (and
   multiplies a negative one) of every token seen in the prompt or the output so far;
   ``frequency_penalty`` subtracts ``penalty * count`` of each token in the output so far,
   ``presence_penalty`` subtracts ``penalty`` once for each token present in the output;
3. structured output: tokens outside the request's grammar go to ``-inf``
   (:mod:`loraswap.service.engine.grammar`);
4. **log-probabilities are read here**: ``log_softmax`` of the biased, penalized and masked
   logits, before temperature, min_p, top_k and top_p (vLLM's ``processed_logprobs`` mode;
   with no bias, penalty or grammar, exactly the model's own distribution under the
   request's adapter);
5. sampling (:mod:`loraswap.service.engine.sampling`): temperature, then min_p, top_k,
   top_p.

Prompt tokens' log-probabilities (``echo``) are the model's own distribution: no bias and
no penalty applies to tokens the model did not choose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

MAX_TOP_LOGPROBS = 20
"""Most alternatives per token, as OpenAI allows."""

PROMPT_CHUNK = 256
"""Prompt positions turned into logits at once for ``echo``: 256 rows of a 49k vocabulary
are 50 MB of float32, where a whole 2k-token prompt would be 400 MB."""


@dataclass(frozen=True)
class TokenLogprob:
    """A token's natural-log probability and the ``top`` most probable tokens at its place
    (``(token id, logprob)``, most probable first; empty unless asked for)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class PenaltyState:
    """The token history one sequence's penalties need: counts of its output tokens and
    which tokens its prompt or output holds. Allocated at the first step (the vocabulary
    size is the logits' width)."""

    prompt_ids: tuple[int, ...]
    counts: torch.Tensor | None = None
    seen: torch.Tensor | None = None

    def _ensure(self, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.counts is None or self.seen is None:
            self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            prompt = [t for t in self.prompt_ids if 0 <= t < vocab]
            if prompt:
                self.seen[torch.tensor(prompt, dtype=torch.long, device=device)] = True
        return self.counts, self.seen

    def record(self, token: int) -> None:
        """Count an output token (before the first step: nothing to count into yet)."""
        if self.counts is not None and self.seen is not None and 0 <= token < len(self.counts):
            self.counts[token] += 1
            self.seen[token] = True

    def apply(self, logits: torch.Tensor, *, repetition: float, frequency: float,
              presence: float) -> torch.Tensor:
        """Penalized copy of one row of float32 logits."""
        counts, seen = self._ensure(logits.shape[-1], logits.device)
        out = logits
        if repetition != 1.0:
            out = torch.where(seen, torch.where(out > 0, out / repetition, out * repetition), out)
        if frequency:
            out = out - frequency * counts
        if presence:
            out = out - presence * (counts > 0).float()
        return out


def add_bias(logits: torch.Tensor, bias: tuple[tuple[int, float], ...]) -> torch.Tensor:
    """``logits`` plus a token-id → bias map (ids were checked against the vocabulary)."""
    if not bias:
        return logits
    ids = torch.tensor([b[0] for b in bias], dtype=torch.long, device=logits.device)
    values = torch.tensor([b[1] for b in bias], dtype=logits.dtype, device=logits.device)
    return logits.index_add(0, ids, values)


def token_logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s entry of one row of log-probabilities, with the ``top`` best."""
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        values, ids = logprobs.topk(min(top, logprobs.shape[-1]))
        best = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(logprobs[token]), best)


def prompt_logprobs(hidden: torch.Tensor, prompt: list[int], top: int,
                    head: Callable[[torch.Tensor], torch.Tensor]) -> list[TokenLogprob | None]:
    """Log-probabilities of a prompt's tokens from its prefill: ``None`` for the first
    (nothing predicts it), then token ``i`` under the logits at position ``i - 1``.

    ``hidden``: the final-normed hidden states of positions ``0..len-2``; ``head`` turns
    them into float32 logits, :data:`PROMPT_CHUNK` positions at a time.
    """
    out: list[TokenLogprob | None] = [None]
    for start in range(0, hidden.shape[0], PROMPT_CHUNK):
        logprobs = torch.log_softmax(head(hidden[start : start + PROMPT_CHUNK]), dim=-1)
        for offset in range(logprobs.shape[0]):
            out.append(token_logprob(logprobs[offset], prompt[start + offset + 1], top))
    return out
