"""Per-request sampling parameters and next-token selection for a batch of rows.

One row's trouble stays in its row: :func:`sample_rows` reports a row whose logits are not
finite, or whose sampling fails, as that row's error, so the scheduler fails that request
alone and every other request of the batch goes on.

:func:`chosen_logprobs` gives each chosen token's log-probability (a drift signal, see
``docs/drift.md``): the natural log of its probability under the model's own distribution,
``log_softmax`` of the raw logits row (temperature 1, no top-p), whatever the request's
sampling parameters. One ``logsumexp`` per row per step, over logits the step already has.

What a request asks for beyond temperature and top_p (``logit_bias``, penalties, the
log-probabilities it wants back) is applied per row in :mod:`loraswap.service.engine.logits`;
a row that asks for none of it takes the batch's shared argmax as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loraswap.core.errors import InvalidRequestError, LoraswapError
from loraswap.service.engine.detokenizer import MAX_STOP_CHARS
from loraswap.service.engine.grammar import CompiledGrammar, RowConstraint
from loraswap.service.engine.logits import (
    MAX_TOP_LOGPROBS,
    PenaltyState,
    TokenLogprob,
    add_bias,
    token_logprob,
)
from loraswap.service.errors import RowFailedError

MAX_LOGIT_BIAS = 300
"""Most entries of ``logit_bias`` (OpenAI's limit)."""

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
    # 0: no top-k cut; min_p 0: no min-p cut (both applied after temperature, as vLLM).
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # (token id, bias) pairs added to the logits; ids are checked against the vocabulary
    # by the API (the engine only clips out-of-range ids to nothing).
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Tokens that end the sequence like end-of-sequence does (not part of the text).
    stop_token_ids: tuple[int, ...] = ()
    # Log-probabilities to return: None, none; k, each generated token's and its k best
    # alternatives. ``prompt_logprobs`` likewise for the prompt's tokens (echo).
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    # Structured output: the grammar every generated token must keep the text inside
    # (compiled by the API, :mod:`loraswap.service.engine.grammar`); None: free.
    grammar: CompiledGrammar | None = field(default=None, compare=False, repr=False)

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
        self._check_extras()

    def _check_extras(self) -> None:
        if self.top_k < 0:
            raise InvalidRequestError(f"top_k must be >= 0 (0: no cut), got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise InvalidRequestError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not 0 < self.repetition_penalty <= 10:
            raise InvalidRequestError(
                f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}")
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise InvalidRequestError(
                f"logit_bias has {len(self.logit_bias)} entries; at most {MAX_LOGIT_BIAS}")
        if any(not -100 <= bias <= 100 for _, bias in self.logit_bias):
            raise InvalidRequestError("each logit_bias value must be in [-100, 100]")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
                raise InvalidRequestError(
                    f"{name} must be in [0, {MAX_TOP_LOGPROBS}], got {value}")

    @property
    def processes_logits(self) -> bool:
        """Whether the raw logits change before sampling (bias, a penalty, a grammar)."""
        return bool(self.logit_bias or self.presence_penalty or self.frequency_penalty
                    or self.repetition_penalty != 1.0 or self.grammar is not None)

    @property
    def greedy(self) -> bool:
        """Temperature 0 (or below :data:`GREEDY_BELOW`) is argmax decoding, which ignores
        top_p and seed."""
        return self.temperature < GREEDY_BELOW


@dataclass
class TokenSampler:
    """Picks one sequence's tokens; owns its random generator so seeds are reproducible,
    and the token history its penalties need."""

    params: SamplingParams
    prompt_ids: tuple[int, ...] = ()
    generator: torch.Generator = field(init=False)
    penalties: PenaltyState = field(init=False)
    constraint: RowConstraint | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.generator = torch.Generator()
        if self.params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.params.seed)
        self.penalties = PenaltyState(self.prompt_ids)
        if self.params.grammar is not None:
            self.constraint = self.params.grammar.start()

    def _generator_on(self, device: torch.device) -> torch.Generator:
        """The generator for logits on ``device``: sampling stays where the logits are (a
        CUDA multinomial needs a CUDA generator). On first use off the CPU it is replaced by
        one on that device, seeded with the request's seed (or a draw of the CPU one), so
        a seed gives the same tokens on one device type every time."""
        if self.generator.device.type != device.type:
            seed = self.params.seed
            if seed is None:
                seed = int(torch.randint(2**62, (1,), generator=self.generator))
            self.generator = torch.Generator(device=device).manual_seed(seed)
        return self.generator

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """One row of raw logits after ``logit_bias``, the penalties and the grammar's mask
        (a copy if any)."""
        params = self.params
        if not params.processes_logits:
            return logits
        out = add_bias(logits.float(), params.logit_bias)
        if params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
            out = self.penalties.apply(out, repetition=params.repetition_penalty,
                                       frequency=params.frequency_penalty,
                                       presence=params.presence_penalty)
        if self.constraint is not None:
            out = self.constraint.mask(out)
        return out

    def sample(self, logits: torch.Tensor) -> int:
        """Next token from one row of (processed) float32 logits ``[vocab]``."""
        params = self.params
        if params.greedy:
            return int(logits.argmax())
        # Shift by the maximum first: the scaled logits are then <= 0, so no temperature
        # can overflow them (the largest is exactly 0, so the softmax has a positive mass).
        scaled = (logits.float() - logits.max()) / params.temperature
        probs = torch.softmax(scaled, dim=-1)
        # vLLM's order after temperature: min_p, then top_k, then top_p.
        if params.min_p > 0:
            probs = torch.where(probs < params.min_p * probs.max(), 0.0, probs)
        if 0 < params.top_k < probs.shape[-1]:
            kth = probs.topk(params.top_k).values[-1]
            probs = torch.where(probs < kth, 0.0, probs)
        if params.top_p < 1.0:
            sorted_probs, order = (probs / probs.sum()).sort(descending=True)
            cumulative = sorted_probs.cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            keep = cumulative - sorted_probs < params.top_p
            sorted_probs = sorted_probs * keep
            choice = torch.multinomial(sorted_probs, 1,
                                       generator=self._generator_on(probs.device))
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self._generator_on(probs.device)))

    def pick(self, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """Next token from one row of raw logits, with its log-probability entry if the
        request asked for one; the token joins the penalty history."""
        processed = self.process(logits)
        token = self.sample(processed)
        entry = None
        if self.params.logprobs is not None:
            entry = token_logprob(torch.log_softmax(processed.float(), dim=-1), token,
                                  self.params.logprobs)
        self.penalties.record(token)
        if self.constraint is not None:
            self.constraint.advance(token)
        return token, entry


@dataclass(frozen=True)
class Picked:
    """A row's next token and, if the request asked, its log-probability entry."""

    token: int
    logprob: TokenLogprob | None = None


def pick_rows(logits: torch.Tensor, samplers: list[TokenSampler | None],
              ) -> list[Picked | LoraswapError | None]:
    """Next token of each row, or that row's error; None for rows with no sampler.

    Greedy rows that change nothing in their logits and want no log-probabilities share
    one batched argmax; every other row is processed alone. A row whose logits are not
    all finite (an adapter with huge weights, a numerical fault) fails alone.
    """
    # One device-to-host transfer for both (on a GPU each ``tolist`` is a synchronisation).
    greedy, finite_flags = torch.stack(
        [logits.argmax(dim=-1), torch.isfinite(logits).all(dim=-1).long()]).tolist()
    finite = [bool(flag) for flag in finite_flags]
    picked: list[Picked | LoraswapError | None] = []
    for row, sampler in enumerate(samplers):
        if sampler is None:
            picked.append(None)
        elif not finite[row]:
            picked.append(RowFailedError(
                "the model produced non-finite logits for this request; it was stopped"))
        elif (sampler.params.greedy and not sampler.params.processes_logits
              and sampler.params.logprobs is None):
            picked.append(Picked(int(greedy[row])))
        else:
            picked.append(_pick_one(sampler, logits[row]))
    return picked


def token_of(picked: Picked | LoraswapError | None) -> int | LoraswapError:
    """A row's token for :func:`chosen_logprobs` (-1: the row has none)."""
    if picked is None:
        return -1
    return picked if isinstance(picked, LoraswapError) else picked.token


def _pick_one(sampler: TokenSampler, logits: torch.Tensor) -> Picked | LoraswapError:
    try:
        token, entry = sampler.pick(logits)
    except LoraswapError as exc:  # the row's grammar failed (RowFailedError)
        return exc
    except (RuntimeError, ValueError) as exc:  # torch raises these for invalid distributions
        return RowFailedError(f"sampling failed for this request: {exc}")
    return Picked(token, entry)


def sample_rows(logits: torch.Tensor, samplers: list[TokenSampler | None],
                ) -> list[int | LoraswapError]:
    """Next token for each row (:func:`pick_rows` without the log-probability entries), or
    that row's error; rows with no sampler (empty cache rows) get -1."""
    return [-1 if p is None else p if isinstance(p, LoraswapError) else p.token
            for p in pick_rows(logits, samplers)]


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
