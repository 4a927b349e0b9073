"""The one request pipeline of both API families.

Every inference request, native or OpenAI, goes the same way:

1. **authenticate** — :mod:`loraswap.service.api.gate`, before the body is read;
2. **resolve** — the adapter name becomes a :class:`ServingTarget`, exactly once;
3. **check** — the API's rules for that target (task, parameters), before any cost;
4. **admit** — a lease on the tenant's rate and concurrency limits, counted per input, and
   the request's places in the engine's queue (its tenant's share), before any work;
5. **encode** — the plan's inputs tokenized off the event loop (:meth:`RequestPlan.encode`);
6. **load and queue** — weights decoded, every input queued in those places;
7. **render** — the plan turns the queued batch into the whole answer or a stream
   (:meth:`RequestPlan.render`), and the lease is given back when it ends.

This class drives every step; the API modules (:mod:`loraswap.service.api.serving_predict`,
:mod:`loraswap.service.api.serving_openai`) only describe a request as a
:class:`RequestPlan` (checks, encoding, rendering) and never call back into the pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from loraswap.core.errors import InvalidRequestError
from loraswap.service.adapter_source import AdapterResolver
from loraswap.service.api.answers import new_request_id
from loraswap.service.api.batches import ClassificationBatch, SubmittedBatch, until_disconnect
from loraswap.service.auth import Tenant, check_access, fairness_key
from loraswap.service.engine.classify import ClassificationRequest, ClassificationStream
from loraswap.service.engine.engine import LoraEngine
from loraswap.service.engine.fair_queue import QueuePlaces
from loraswap.service.engine.requests import GenerationRequest, RequestStream
from loraswap.service.engine.sampling import SamplingParams
from loraswap.service.limits import Lease, TenantLimiter
from loraswap.service.metrics import ServiceMetrics
from loraswap.service.targets import ServingTarget

T = TypeVar("T")


class Prepared(Protocol):
    """A submitted request, answered whole or as server-sent events."""

    async def collect(self) -> BaseModel:
        """Wait for every output and build the answer."""
        ...

    def sse(self) -> AsyncIterator[str]:
        """The answer as server-sent events."""
        ...


class Work(Protocol):
    """A request's inputs as the engine takes them (what :meth:`RequestPlan.encode` makes)."""

    @property
    def prompts(self) -> list[list[int]]:
        """Token ids of each engine request."""
        ...

    @property
    def params(self) -> list[SamplingParams] | None:
        """Each prompt's sampling for generation; None: classify them."""
        ...


W = TypeVar("W", bound=Work)


class RequestPlan(Protocol[W]):
    """What an API asks of the pipeline for one request, in its own protocol's terms."""

    @property
    def adapter(self) -> str | None:
        """The adapter reference the request names; None for the base model."""
        ...

    @property
    def inputs(self) -> int:
        """How many engine requests it makes (each counts against the tenant's limits)."""
        ...

    @property
    def stream(self) -> bool:
        """Whether the answer is streamed."""
        ...

    @property
    def id_prefix(self) -> str:
        """The prefix of the answer's id (``pred``, ``cmpl``, ``chatcmpl``)."""
        ...

    def check(self, target: ServingTarget) -> None:
        """Refuse (4xx) what this API does not allow on ``target``; nothing is spent yet."""
        ...

    def encode(self, target: ServingTarget) -> W:
        """Tokenize the inputs for ``target`` (blocking: runs on the tokenizer thread)."""
        ...

    def render(self, target: ServingTarget, work: W,
               batch: SubmittedBatch | ClassificationBatch, request_id: str) -> Prepared:
        """The answer of the queued ``batch`` (``target`` now holds its weights)."""
        ...


@dataclass(frozen=True)
class RequestLimits:
    """Bounds of one request, checked before any work."""

    max_inputs: int


class ServingPipeline:
    """Resolve → check → admit → submit → render, shared by every inference route."""

    def __init__(self, *, engine: LoraEngine, resolver: AdapterResolver,
                 limiter: TenantLimiter, metrics: ServiceMetrics, limits: RequestLimits,
                 ) -> None:
        self.engine = engine
        self.resolver = resolver
        self._limiter = limiter
        self._metrics = metrics
        self._limits = limits
        # One thread for tokenizing and templating: off the event loop, and never two
        # threads inside the same tokenizer object.
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="loraswap-tokenize")

    def close(self) -> None:
        """Stop the tokenizer thread."""
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)

    async def answer(self, request: Request, tenant: Tenant | None, plan: RequestPlan[W],
                     ) -> BaseModel | StreamingResponse:
        """Run ``plan`` through the pipeline and answer the HTTP request."""
        target = await self.resolve(tenant, plan.adapter)
        request.state.adapter = target.name  # a metrics label: only resolved names
        plan.check(target)
        with (self.admit(tenant, plan.inputs) as lease,
              self.engine.reserve(fairness_key(tenant, target.name), plan.inputs) as places):
            # The places are taken before tokenizing: a caller over its share of the queue
            # is a 429 now, without queueing for the tokenizer thread behind everyone else.
            work = await self.tokenize(lambda: plan.encode(target))
            target = await self.load(target)
            request_id = new_request_id(plan.id_prefix)
            batch = self.queue(target, work, request_id=request_id, tenant=tenant,
                               places=places)
            prepared = plan.render(target, work, batch, request_id)
            if plan.stream:
                return StreamingResponse(lease.hand_to(prepared.sse()),
                                         media_type="text/event-stream")
            return await until_disconnect(request, prepared.collect())

    async def resolve(self, tenant: Tenant | None, adapter: str | None) -> ServingTarget:
        """The target ``adapter`` means for this caller (None: the base model); 404 for
        another tenant's adapter, exactly as for a missing one."""
        check_access(tenant, adapter)
        if adapter is None:
            return ServingTarget.base()
        # The resolver may read the store: off the event loop.
        return await asyncio.to_thread(self.resolver.resolve, adapter)

    def admit(self, tenant: Tenant | None, inputs: int) -> Lease:
        """A lease for ``inputs`` engine requests; 400 for a request that could never fit."""
        if inputs > self._limits.max_inputs:
            raise InvalidRequestError(
                f"the request has {inputs} inputs; at most {self._limits.max_inputs} are "
                "allowed in one request (LORASWAP_MAX_INPUTS_PER_REQUEST)")
        share = self.engine.queue_share
        if inputs > share:
            raise InvalidRequestError(
                f"the request has {inputs} inputs, more than the {share} requests one caller "
                "may have waiting (LORASWAP_MAX_QUEUE_PER_TENANT): split it")
        return self._limiter.admit(tenant, cost=inputs)

    async def tokenize(self, work: Callable[[], T]) -> T:
        """Run tokenizing/templating ``work`` on the tokenizer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, work)

    async def load(self, target: ServingTarget) -> ServingTarget:
        """``target`` with its decoded (and checked) weights; the base model as it is."""
        if target.key is None or target.read is None:
            return target
        return target.loaded(await self.engine.adapter_weights(target.key, target.read))

    def queue(self, target: ServingTarget, work: Work, *, request_id: str,
              tenant: Tenant | None, places: QueuePlaces | None = None,
              ) -> SubmittedBatch | ClassificationBatch:
        """Queue ``work``: generation when it carries sampling, else classification."""
        if work.params is not None:
            return self.generate(target, work.prompts, work.params, request_id=request_id,
                                 tenant=tenant, places=places)
        return self.classify(target, work.prompts, request_id=request_id, tenant=tenant,
                             places=places)

    def generate(self, target: ServingTarget, prompts: list[list[int]],
                 params: list[SamplingParams], *, request_id: str, tenant: Tenant | None,
                 places: QueuePlaces | None = None) -> SubmittedBatch:
        """Queue every prompt; if the queue refuses one, the ones before it are dropped."""
        streams: list[RequestStream] = []
        batch = SubmittedBatch(self.engine, streams)
        key = fairness_key(tenant, target.name)
        try:
            for index, (prompt, sampling) in enumerate(zip(prompts, params, strict=True)):
                streams.append(self.engine.submit(GenerationRequest(
                    request_id=f"{request_id}-{index}", prompt_ids=prompt, params=sampling,
                    adapter=target.key, adapter_weights=target.weights, fairness_key=key),
                    places))
                self._metrics.prompt_tokens.labels(target.name).inc(len(prompt))
        except BaseException:
            batch.cancel()
            raise
        return batch

    def classify(self, target: ServingTarget, prompts: list[list[int]], *, request_id: str,
                 tenant: Tenant | None, places: QueuePlaces | None = None,
                 ) -> ClassificationBatch:
        """Queue every input of a seq-cls / token-cls request; all or none stay queued."""
        if target.key is None or target.weights is None or not target.task.has_labels:
            raise InvalidRequestError(f"{target.name!r} is not a classification adapter")
        target.class_names()  # a head that does not match its labels: 422 before queueing
        streams: list[ClassificationStream] = []
        batch = ClassificationBatch(self.engine, streams)
        key = fairness_key(tenant, target.name)
        try:
            for index, prompt in enumerate(prompts):
                streams.append(self.engine.classify(ClassificationRequest(
                    request_id=f"{request_id}-{index}", prompt_ids=prompt, task=target.task,
                    adapter=target.key, adapter_weights=target.weights, fairness_key=key,
                    attention=target.traits.attention), places))
                self._metrics.prompt_tokens.labels(target.name).inc(len(prompt))
        except BaseException:
            batch.cancel()
            raise
        return batch
