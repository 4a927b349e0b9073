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
from adapters.lora_format import CONFIG_FILE
from service.adapter_source import ADAPTER_NAME, AdapterResolver, LocalAdapterDirectory
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
from service.auth import Tenant, fairness_key
from service.engine.requests import GenerationEvent

BASE_ALIAS = "base"
"""Accepted as ``model`` for the base model, whatever its name."""

GENERATIVE: ModelTask = "causal-lm"
_PEFT_TASKS: dict[str, ModelTask] = {
    "CAUSAL_LM": GENERATIVE, "SEQ_CLS": "seq-cls", "TOKEN_CLS": "token-cls",
}


def task_of(task_type: str | None) -> ModelTask:
    """loraswap's task for a PEFT ``task_type``; none given means a causal LM."""
    if not task_type:
        return GENERATIVE
    return _PEFT_TASKS.get(task_type.upper(), task_type.lower().replace("_", "-"))


def adapter_task_type(resolver: AdapterResolver, name: str) -> str | None:
    """``task_type`` of the adapter's ``adapter_config.json``; None when not readable.

    Only the local adapter folder exposes its files; the registry will report the task
    itself. ``name`` must already match :data:`ADAPTER_NAME` (no path tricks).
    """
    if not isinstance(resolver, LocalAdapterDirectory) or resolver.root is None:
        return None
    try:
        raw = json.loads((resolver.root / name / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # a missing adapter is reported by the resolver, with its name
    value = raw.get("task_type") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


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

    async def list_models(self) -> ModelList:
        """The base model and every servable adapter, with their kind and task."""
        resolver = self._generation.resolver
        names = resolver.names()
        tasks = await asyncio.to_thread(
            lambda: [task_of(adapter_task_type(resolver, n)) for n in names])
        cards = [ModelCard(id=self.base_model, created=self.created, owned_by="loraswap",
                           loraswap=ModelExtension(kind="base", task=GENERATIVE))]
        cards += [ModelCard(id=name, created=self.created, owned_by="loraswap",
                            loraswap=ModelExtension(kind="adapter", task=task))
                  for name, task in zip(names, tasks, strict=True)]
        return ModelList(data=cards)

    async def model_card(self, model: str) -> ModelCard:
        """The entry of ``model`` (an adapter, the base id or "base")."""
        wanted = self.base_model if model == BASE_ALIAS else model
        for card in (await self.list_models()).data:
            if card.id == wanted:
                return card
        raise AdapterNotFoundError(model)

    def _check_generative(self, model: str) -> str | None:
        """The adapter name ``model`` means (None: the base); 404/400 if it can't generate."""
        if model in (self.base_model, BASE_ALIAS):
            return None
        if not ADAPTER_NAME.fullmatch(model):
            raise AdapterNotFoundError(model)  # no servable adapter can have this name
        task = task_of(adapter_task_type(self._generation.resolver, model))
        if task != GENERATIVE:
            raise InvalidRequestError(
                f"model {model!r} is a {task} adapter and does not generate text; "
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
        adapter = self._check_generative(body.model)
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
