"""Requests into the engine and the stream of events that comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from loraswap.adapters.lora_format import LoraAdapterWeights
from loraswap.core.errors import LoraswapError
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.logits import TokenLogprob
from loraswap.service.engine.sampling import SamplingParams
from loraswap.service.errors import RequestCancelledError


@dataclass
class GenerationRequest:
    """One prompt to complete with one adapter (or the base model when ``adapter`` is None)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    adapter: AdapterVersionRef | None = None
    adapter_weights: LoraAdapterWeights | None = field(default=None, repr=False)
    # Requests sharing a fairness key share one turn of the round-robin admission.
    fairness_key: str = "default"
    arrived_at: float = field(default_factory=time.perf_counter)

    @property
    def cache_scope(self) -> str:
        """Who may share this prompt's cached KV blocks: the fairness key (the tenant, when
        auth is on), the adapter and its version. Never wider: LoRA on k/v changes the
        cache, and a block shared across tenants would leak one's prompt to another's
        timing."""
        adapter = (str(self.adapter.ref), str(self.adapter.version)) if self.adapter else None
        return repr((self.fairness_key, adapter))

    @property
    def adapter_label(self) -> str:
        """The adapter's name for metrics and logs ("base" for none)."""
        return str(self.adapter.ref) if self.adapter else "base"


@dataclass(frozen=True)
class GenerationEvent:
    """New output of one request; the last event has ``finished=True``.

    The last event also carries the drift hooks of the whole sequence (see
    ``docs/drift.md``): ``token_logprobs``, the log-probability of every generated token
    under the model's own distribution (:func:`loraswap.service.engine.sampling.chosen_logprobs`),
    and ``embedding``, the prompt's mean-pooled final-normed hidden state from its prefill.

    What the request asked for (``SamplingParams.logprobs`` / ``prompt_logprobs``): each
    event's ``logprobs`` holds its tokens' entries, and the first event carries
    ``prompt_logprobs`` (the first prompt token's is None).
    """

    text: str
    token_ids: tuple[int, ...]
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: LoraswapError | None = None
    token_logprobs: tuple[float, ...] = field(default=(), repr=False)
    embedding: list[float] | None = field(default=None, repr=False)
    logprobs: tuple[TokenLogprob, ...] = field(default=(), repr=False)
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = field(default=None, repr=False)

    @property
    def mean_logprob(self) -> float | None:
        """Mean natural-log probability of the generated tokens (None: none generated)."""
        if not self.token_logprobs:
            return None
        return sum(self.token_logprobs) / len(self.token_logprobs)


class RequestStream:
    """Carries a request's events from the engine thread to the event loop that awaits them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        # Written by the event loop, read by the engine thread: a plain bool is enough,
        # the engine polls it between steps.
        self.cancelled = False

    def push(self, event: GenerationEvent) -> None:
        """Deliver an event (thread-safe; called by the engine thread)."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def cancel(self) -> None:
        """Ask the engine to drop this request at its next step."""
        self.cancelled = True

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """Events in order until the final one; an engine-side error is raised here."""
        while True:
            event = await self._queue.get()
            if event.error is not None:
                raise event.error
            yield event
            if event.finished:
                return

    async def collect(self) -> GenerationEvent:
        """Wait for the end and return one event with all the text and tokens."""
        texts: list[str] = []
        tokens: list[int] = []
        entries: list[TokenLogprob] = []
        prompt: tuple[TokenLogprob | None, ...] | None = None
        last: GenerationEvent | None = None
        async for event in self.events():
            texts.append(event.text)
            tokens.extend(event.token_ids)
            entries.extend(event.logprobs)
            prompt = event.prompt_logprobs if prompt is None else prompt
            last = event
        if last is None:  # pragma: no cover - events() always ends with a final event
            raise RequestCancelledError("request ended without output")
        return GenerationEvent(
            text="".join(texts), token_ids=tuple(tokens), finished=True,
            finish_reason=last.finish_reason, prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens, token_logprobs=last.token_logprobs,
            embedding=last.embedding, logprobs=tuple(entries), prompt_logprobs=prompt,
        )
