"""OpenAI-compatible completions, chat completions and model list over the generation service.

Adapters are models: ``model`` names an adapter, or the base model (its id, or ``"base"``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request
from pydantic import BaseModel

from adapters.errors import AdapterNotFoundError, InvalidRequestError, LoraswapError
from adapters.package import TaskKind
from service.api.errors import error_body, status_for
from service.api.generation import GenerationService, ResolvedTarget, SubmittedBatch
from service.api.prompts import PromptBuilder
from service.api.protocol import Usage
from service.api.protocol_openai import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    FinishReason,
    ModelCard,
    ModelExtension,
    ModelList,
    ModelTask,
    SamplingFields,
)
from service.auth import Tenant, check_access, fairness_key
from service.engine.requests import GenerationEvent

BASE_ALIAS = "base"
"""Accepted as ``model`` for the base model, whatever its name."""

GENERATIVE: ModelTask = "causal-lm"


def _finish(event: GenerationEvent) -> FinishReason:
    return "stop" if event.finish_reason == "stop" else "length"


def _usage(results: list[GenerationEvent]) -> Usage:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion)


def _data(payload: BaseModel | dict[str, object], *, with_usage: bool = True) -> str:
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(exclude=None if with_usage else {"usage"})
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


@dataclass
class PreparedOpenAI:
    """A submitted completions or chat request; consumed whole or as an SSE stream."""

    chat: bool
    request_id: str
    model: str
    target: ResolvedTarget
    batch: SubmittedBatch
    include_usage: bool
    created: int

    async def collect(self) -> CompletionResponse | ChatCompletionResponse:
        """Wait for every choice and answer in OpenAI's shape."""
        results = await self.batch.collect()
        if self.chat:
            return ChatCompletionResponse(
                id=self.request_id, created=self.created, model=self.model, usage=_usage(results),
                choices=[ChatChoice(index=i, message=AssistantMessage(content=r.text),
                                    finish_reason=_finish(r)) for i, r in enumerate(results)])
        return CompletionResponse(
            id=self.request_id, created=self.created, model=self.model, usage=_usage(results),
            choices=[CompletionChoice(index=i, text=r.text, finish_reason=_finish(r))
                     for i, r in enumerate(results)])

    def _chunk(self, index: int, text: str | None, role: bool = False,
               finish: FinishReason | None = None) -> BaseModel:
        if self.chat:
            delta = ChatDelta(role="assistant" if role else None, content=text)
            return ChatCompletionChunk(
                id=self.request_id, created=self.created, model=self.model,
                choices=[ChatChunkChoice(index=index, delta=delta, finish_reason=finish)])
        return CompletionResponse(
            id=self.request_id, created=self.created, model=self.model,
            choices=[CompletionChoice(index=index, text=text or "", finish_reason=finish)])

    def _usage_chunk(self, usage: Usage) -> BaseModel:
        if self.chat:
            return ChatCompletionChunk(id=self.request_id, created=self.created,
                                       model=self.model, choices=[], usage=usage)
        return CompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                  choices=[], usage=usage)

    async def sse(self, request: Request) -> AsyncIterator[str]:
        """``data: {chunk}`` events, an optional usage chunk, then ``data: [DONE]``."""
        keep = self.include_usage  # OpenAI sends "usage": null on chunks only when asked
        finals: list[GenerationEvent] = []
        try:
            if self.chat:  # the first chat chunk announces the role
                for index in range(len(self.batch.streams)):
                    yield _data(self._chunk(index, "", role=True), with_usage=keep)
            async for index, event in self.batch.events():
                if event.finished:
                    finals.append(event)
                    text = event.text or (None if self.chat else "")
                    yield _data(self._chunk(index, text, finish=_finish(event)), with_usage=keep)
                elif event.text:
                    yield _data(self._chunk(index, event.text), with_usage=keep)
        except LoraswapError as exc:
            # Headers are gone; OpenAI SDKs raise on a chunk that carries "error".
            yield _data(error_body(request, status_for(exc), exc.code, exc.message))
        else:
            if self.include_usage:
                yield _data(self._usage_chunk(_usage(finals)))
        finally:
            self.batch.cancel()  # a client gone before events() started must stop the engine
        yield "data: [DONE]\n\n"


class OpenAIServing:
    """Validates OpenAI requests, maps ``model`` to an adapter and submits the prompts."""

    def __init__(self, generation: GenerationService, prompts: PromptBuilder,
                 base_model: str) -> None:
        self._generation = generation
        self._prompts = prompts
        self.base_model = base_model
        self.created = int(time.time())

    async def list_models(self, tenant: Tenant | None) -> ModelList:
        """The base model (if the tenant may use it) and every adapter visible to the caller."""
        owner = tenant.name if tenant is not None else None
        listing = await asyncio.to_thread(self._generation.resolver.listing, owner)
        cards = []
        if tenant is None or tenant.allow_base_model:
            cards.append(ModelCard(id=self.base_model, created=self.created, owned_by="loraswap",
                                   loraswap=ModelExtension(kind="base", task=GENERATIVE)))
        cards += [ModelCard(id=item.name, created=self.created,
                            owned_by=item.name.partition("/")[0] if "/" in item.name
                            else "loraswap",
                            loraswap=ModelExtension(kind="adapter", task=str(item.task)))
                  for item in listing]
        return ModelList(data=cards)

    async def model_card(self, model: str, tenant: Tenant | None) -> ModelCard:
        """The entry of ``model`` (an adapter, the base id or "base")."""
        wanted = self.base_model if model == BASE_ALIAS else model
        for card in (await self.list_models(tenant)).data:
            if card.id == wanted:
                return card
        raise AdapterNotFoundError(model)

    async def _check_generative(self, model: str, tenant: Tenant | None) -> str | None:
        """The adapter ``model`` means (None: the base); 404/403/400 if the caller can't use
        it to generate."""
        if model in (self.base_model, BASE_ALIAS):
            check_access(tenant, None)
            return None
        check_access(tenant, model)
        resolved = await asyncio.to_thread(self._generation.resolver.resolve, model)
        if resolved.task is not TaskKind.CAUSAL_LM:
            raise InvalidRequestError(
                f"model {model!r} is a {resolved.task} adapter and does not generate text; "
                "use POST /v1/predict")
        return model

    def _max_tokens(self, requested: int | None, field: str) -> int:
        limit = self._prompts.limits.max_new_tokens
        if requested is None:
            return limit  # clipped to the room left in context by PromptBuilder.sampling
        if requested > limit:
            raise InvalidRequestError(
                f"{field}={requested} exceeds the limit {limit} (LORASWAP_MAX_NEW_TOKENS_LIMIT)")
        return requested

    async def _submit(self, body: SamplingFields, tenant: Tenant | None, chat: bool,
                      tokenize: Callable[[], list[list[int]]], max_tokens: int,
                      ) -> PreparedOpenAI:
        adapter = await self._check_generative(body.model, tenant)
        prompts = tokenize()
        params = [
            self._prompts.sampling(
                len(p), max_new_tokens=max_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed,
                stop=body.stop_list, ignore_eos=body.ignore_eos)
            for p in prompts
        ]
        target = await self._generation.resolve(adapter)
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        batch = self._generation.submit(target, prompts, params, request_id=request_id,
                                        fairness_key=fairness_key(tenant, target.label))
        return PreparedOpenAI(
            chat=chat, request_id=request_id, model=adapter or self.base_model, target=target,
            batch=batch, include_usage=body.include_usage, created=int(time.time()))

    async def prepare_completion(self, body: CompletionRequest, *, tenant: Tenant | None,
                                 ) -> PreparedOpenAI:
        """Submit raw-text prompts (no chat template); raises 4xx errors before any output."""
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts:
            raise InvalidRequestError("prompt must not be an empty list")
        return await self._submit(
            body, tenant, False, lambda: [self._prompts.from_text(t, raw=True) for t in texts],
            self._max_tokens(body.max_tokens, "max_tokens"))

    async def prepare_chat(self, body: ChatCompletionRequest, *, tenant: Tenant | None,
                           ) -> PreparedOpenAI:
        """Submit a conversation rendered with the base model's chat template."""
        messages = [m.as_template_message() for m in body.messages]
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        max_tokens = self._max_tokens(body.max_completion_tokens or body.max_tokens, field)
        return await self._submit(body, tenant, True,
                                  lambda: [self._prompts.from_messages(messages)], max_tokens)
