"""OpenAI-compatible completions, chat completions and model list over the shared pipeline.

Adapters are models: ``model`` names an adapter, or the base model (its id, or ``"base"``).
Answers of a registered adapter go to the drift/capture sink exactly as ``/v1/predict``'s
do, under the OpenAI answer's ``id`` (so ``POST /v1/feedback`` takes that id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from loraswap.adapters.package import TaskKind
from loraswap.core.errors import AdapterNotFoundError, InvalidRequestError, LoraswapError
from loraswap.service.api.answers import (
    SSE_DONE,
    finish_reason,
    sse_data,
    usage_of,
)
from loraswap.service.api.batches import ClassificationBatch, SubmittedBatch
from loraswap.service.api.errors import ErrorFormat, error_body, status_for
from loraswap.service.api.logprobs_format import TokenTexts, chat_logprobs, completion_logprobs
from loraswap.service.api.openai_params import prompt_list, sampling_controls
from loraswap.service.api.pipeline import ServingPipeline
from loraswap.service.api.prompts import PromptBuilder
from loraswap.service.api.protocol import Usage
from loraswap.service.api.protocol_openai import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    FinishReason,
    ModelCard,
    ModelExtension,
    ModelList,
    ModelTask,
    SamplingFields,
)
from loraswap.service.api.protocol_tools import ToolCallDelta
from loraswap.service.api.structured import response_grammar
from loraswap.service.api.tool_calls import parse_tool_call, template_messages
from loraswap.service.auth import Tenant
from loraswap.service.drift.records import PredictionSink, submit_generations
from loraswap.service.engine.logits import TokenLogprob
from loraswap.service.engine.requests import GenerationEvent
from loraswap.service.engine.sampling import SamplingParams
from loraswap.service.targets import BASE_TARGET, ServingTarget

GENERATIVE: ModelTask = "causal-lm"


@dataclass
class PreparedOpenAI:
    """A submitted completions or chat request; consumed whole or as an SSE stream."""

    chat: bool
    request_id: str
    model: str
    batch: SubmittedBatch
    include_usage: bool
    created: int
    # Drift/capture seam (service/drift): the served version, the inputs as text, where
    # answers are recorded and each prompt's sampling.
    target: ServingTarget = field(default_factory=ServingTarget.base)
    texts: list[str] = field(default_factory=list)
    sink: PredictionSink | None = None
    params: list[SamplingParams] = field(default_factory=list)
    # Choices per prompt (choice i answers prompt i // n), and what the answer shows:
    # the prompts (ids and text) for echo, and logprobs (None: not asked; chat: a bool).
    n: int = 1
    prompts: list[list[int]] = field(default_factory=list)
    prompt_texts: list[str] = field(default_factory=list)
    echo: bool = False
    logprobs: bool = False
    token_texts: TokenTexts | None = None
    # Chat with tools (tool_choice not "none"): a turn may be a call, sent whole.
    tools: bool = False

    def _message(self, event: GenerationEvent) -> tuple[AssistantMessage, FinishReason]:
        """A chat choice's message: its text, or the tool call it is."""
        call = parse_tool_call(event.text) if self.tools else None
        if call is None:
            return AssistantMessage(content=event.text), finish_reason(event)
        return AssistantMessage(content=None, tool_calls=[call]), "tool_calls"

    def _tool_chunk(self, index: int, event: GenerationEvent) -> BaseModel:
        """The whole turn of a chat with tools, in one chunk: its text or its call."""
        message, reason = self._message(event)
        calls = [ToolCallDelta(index=0, id=c.id, function=c.function)
                 for c in message.tool_calls or []]
        delta = ChatDelta(content=message.content, tool_calls=calls or None)
        return ChatCompletionChunk(
            id=self.request_id, created=self.created, model=self.model,
            choices=[ChatChunkChoice(index=index, delta=delta, finish_reason=reason,
                                     logprobs=self._chat_logprobs(event))])

    def _usage(self, results: list[GenerationEvent]) -> Usage:
        """Every choice's completion tokens; each prompt's tokens once (as OpenAI counts)."""
        usage = usage_of(results)
        prompt = sum(r.prompt_tokens for i, r in enumerate(results) if i % self.n == 0)
        return Usage(prompt_tokens=prompt, completion_tokens=usage.completion_tokens,
                     total_tokens=prompt + usage.completion_tokens)

    def _echoed(self, index: int, event: GenerationEvent) -> tuple[str, list[int],
                                                                   list[TokenLogprob | None]]:
        """What a choice's first text (or chunk) starts with: the prompt when echoed."""
        if not self.echo:
            return "", [], []
        prompt = self.prompts[index // self.n]
        entries: list[TokenLogprob | None] = list(event.prompt_logprobs or [])
        return self.prompt_texts[index // self.n], prompt, entries

    def _completion_logprobs(self, index: int, event: GenerationEvent, first: bool,
                             offset: int) -> CompletionLogprobs | None:
        if not self.logprobs or self.token_texts is None:
            return None
        _, prompt, prompt_entries = self._echoed(index, event) if first else ("", [], [])
        tokens = [*prompt, *event.token_ids]
        entries: list[TokenLogprob | None] = [*prompt_entries, *event.logprobs]
        if len(entries) != len(tokens):  # pragma: no cover - the engine gives one per token
            entries = [None] * len(tokens)
        return completion_logprobs(self.token_texts, tokens, entries, offset)

    def _chat_logprobs(self, event: GenerationEvent) -> ChatLogprobs | None:
        if not self.logprobs or self.token_texts is None:
            return None
        return chat_logprobs(self.token_texts, event.logprobs)

    def _start_offset(self, index: int) -> int:
        if self.echo or not self.prompt_texts:  # no prompt texts: no logprobs asked
            return 0
        return len(self.prompt_texts[index // self.n])

    def _record(self, results: list[GenerationEvent]) -> None:
        """Records of the answered choices (in index order), as /v1/predict sends them."""
        outputs: list[dict[str, object]] = [
            {"text": r.text, "tokens": r.completion_tokens, "finish_reason": finish_reason(r)}
            for r in results]
        texts = [self.texts[i // self.n] for i in range(len(results))] if self.texts else []
        submit_generations(self.sink, self.request_id, self.target.key, texts, outputs,
                           results, self.params)

    async def collect(self) -> CompletionResponse | ChatCompletionResponse:
        """Wait for every choice and answer in OpenAI's shape."""
        results = await self.batch.collect()
        self._record(results)  # drift/capture seam
        if self.chat:
            return ChatCompletionResponse(
                id=self.request_id, created=self.created, model=self.model,
                usage=self._usage(results),
                choices=[ChatChoice(index=i, message=message, logprobs=self._chat_logprobs(r),
                                    finish_reason=reason)
                         for i, r in enumerate(results) for message, reason in [self._message(r)]])
        return CompletionResponse(
            id=self.request_id, created=self.created, model=self.model,
            usage=self._usage(results),
            choices=[CompletionChoice(
                index=i, text=self._echoed(i, r)[0] + r.text, finish_reason=finish_reason(r),
                logprobs=self._completion_logprobs(i, r, True, self._start_offset(i)))
                for i, r in enumerate(results)])

    def _chunk(self, index: int, text: str | None, role: bool = False,
               finish: FinishReason | None = None, event: GenerationEvent | None = None,
               first: bool = False, offset: int = 0) -> BaseModel:
        if self.chat:
            delta = ChatDelta(role="assistant" if role else None, content=text)
            return ChatCompletionChunk(
                id=self.request_id, created=self.created, model=self.model,
                choices=[ChatChunkChoice(
                    index=index, delta=delta, finish_reason=finish,
                    logprobs=self._chat_logprobs(event) if event is not None else None)])
        logprobs = (self._completion_logprobs(index, event, first, offset)
                    if event is not None else None)
        return CompletionResponse(
            id=self.request_id, created=self.created, model=self.model,
            choices=[CompletionChoice(index=index, text=text or "", finish_reason=finish,
                                      logprobs=logprobs)])

    def _usage_chunk(self, usage: Usage) -> BaseModel:
        if self.chat:
            return ChatCompletionChunk(id=self.request_id, created=self.created,
                                       model=self.model, choices=[], usage=usage)
        return CompletionResponse(id=self.request_id, created=self.created, model=self.model,
                                  choices=[], usage=usage)

    def _data(self, chunk: BaseModel) -> str:
        # OpenAI sends "usage": null on chunks only when usage was asked for.
        return sse_data(chunk, exclude=None if self.include_usage else {"usage"})

    async def sse(self) -> AsyncIterator[str]:
        """``data: {chunk}`` events, an optional usage chunk, then ``data: [DONE]``."""
        finals: dict[int, GenerationEvent] = {}
        texts = ["" for _ in self.batch.streams]  # generated text (for the records)
        started: set[int] = set()
        offsets = [self._start_offset(i) for i in range(len(self.batch.streams))]
        try:
            if self.chat:  # the first chat chunk announces the role
                for index in range(len(self.batch.streams)):
                    yield self._data(self._chunk(index, "", role=True))
            async for index, event in self.batch.events():
                first = index not in started
                started.add(index)
                echoed, prompt, _ = self._echoed(index, event) if first else ("", [], [])
                shown = echoed + event.text
                texts[index] += event.text
                if self.tools:  # a call is sent whole, once the turn is complete
                    if event.finished:
                        finals[index] = dataclasses.replace(event, text=texts[index])
                        yield self._data(self._tool_chunk(index, finals[index]))
                    continue
                offset = offsets[index]
                if self.logprobs and self.token_texts is not None:
                    offsets[index] += sum(len(self.token_texts(t))
                                          for t in [*prompt, *event.token_ids])
                if event.finished:
                    finals[index] = dataclasses.replace(event, text=texts[index])
                    text = shown or (None if self.chat else "")
                    yield self._data(self._chunk(index, text, finish=finish_reason(event),
                                                 event=event, first=first, offset=offset))
                elif shown or self.logprobs:
                    yield self._data(self._chunk(index, shown, event=event, first=first,
                                                 offset=offset))
        except LoraswapError as exc:
            # Headers are gone; OpenAI SDKs raise on a chunk that carries "error".
            yield sse_data(error_body(ErrorFormat.OPENAI, status_for(exc), exc.code,
                                      exc.message))
        else:
            done = [finals[i] for i in sorted(finals)]
            if len(done) == len(self.batch.streams):
                self._record(done)  # drift/capture seam
            if self.include_usage:
                yield sse_data(self._usage_chunk(self._usage(done)))
        finally:
            self.batch.cancel()  # a client gone before events() started must stop the engine
        yield SSE_DONE


@dataclass(frozen=True)
class OpenAIWork:
    """A completions or chat request encoded: its prompts and their sampling."""

    prompts: list[list[int]]  # one per engine request: each prompt n times
    params: list[SamplingParams]
    distinct: list[list[int]] = field(default_factory=list)  # each prompt once
    prompt_texts: list[str] = field(default_factory=list)  # for echo and text offsets


@dataclass
class OpenAIPlan:
    """One completions or chat request, as the pipeline runs it."""

    body: SamplingFields
    model: str  # the model as the client named it, echoed in the answer
    adapter: str | None
    chat: bool
    max_tokens: int
    tokenize: Callable[[], list[list[int]]]
    prompts: PromptBuilder
    num_prompts: int
    texts: list[str]  # each prompt as text, for drift capture
    sink: PredictionSink | None = None
    # Top alternatives per generated token (None: no logprobs); echo: completions only.
    logprobs: int | None = None
    echo: bool = False
    tools: bool = False

    @property
    def n(self) -> int:
        """Choices per prompt."""
        return self.body.n or 1

    @property
    def inputs(self) -> int:
        """Engine requests: every choice of every prompt counts against the tenant."""
        return self.num_prompts * self.n

    @property
    def stream(self) -> bool:
        """Whether the answer is streamed."""
        return bool(self.body.stream)

    def check(self, target: ServingTarget) -> None:
        """Only text generation: classification adapters answer on /v1/predict."""
        if target.task is not TaskKind.CAUSAL_LM:
            raise InvalidRequestError(
                f"model {self.model!r} is a {target.task} adapter and does not generate "
                "text; use POST /v1/predict")

    @property
    def id_prefix(self) -> str:
        """``chatcmpl-…`` or ``cmpl-…`` answers, as OpenAI names them."""
        return "chatcmpl" if self.chat else "cmpl"

    def encode(self, target: ServingTarget) -> OpenAIWork:
        """Tokenize the prompts and set each one's sampling (on the tokenizer thread)."""
        body = self.body
        prompts = self.tokenize()
        controls = sampling_controls(body, len(self.prompts.tokenizer))
        spec = response_grammar(body)  # response_format, or the tools' call grammar
        if spec is not None:  # compiled here, off the event loop and the engine thread
            controls["grammar"] = self.prompts.grammars.compile(spec)
        n = self.n
        # Choice j of a prompt samples with seed + j: the choices differ, and each one is
        # reproducible alone.
        params = [
            self.prompts.sampling(
                len(p), max_new_tokens=self.max_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                seed=None if body.seed is None else (body.seed + j) % 2**64,
                stop=body.stop_list, ignore_eos=body.ignore_eos, logprobs=self.logprobs,
                prompt_logprobs=self.logprobs if self.echo else None, **controls)
            for p in prompts for j in range(n)
        ]
        shown = self.echo or self.logprobs is not None
        return OpenAIWork([p for p in prompts for _ in range(n)], params, prompts,
                          [self.prompts.tokenizer.decode(p) for p in prompts] if shown else [])

    def render(self, target: ServingTarget, work: OpenAIWork,
               batch: SubmittedBatch | ClassificationBatch, request_id: str) -> PreparedOpenAI:
        """The completion or chat answer of the queued ``batch``."""
        assert isinstance(batch, SubmittedBatch)  # check() admits generation only
        return PreparedOpenAI(
            chat=self.chat, request_id=request_id, model=self.model, batch=batch,
            include_usage=self.body.include_usage, created=int(time.time()), target=target,
            texts=self.texts if self.sink is not None else [], sink=self.sink,
            params=work.params, n=self.n, prompts=work.distinct, echo=self.echo,
            logprobs=self.logprobs is not None, prompt_texts=work.prompt_texts, tools=self.tools,
            token_texts=TokenTexts(self.prompts.tokenizer) if self.logprobs is not None
            else None)


class OpenAIServing:
    """The OpenAI API over the shared pipeline: ``model`` names an adapter or the base."""

    def __init__(self, pipeline: ServingPipeline, prompts: PromptBuilder,
                 base_model: str, sink: PredictionSink | None = None) -> None:
        """``sink``: where answers are recorded for drift and capture (None: drift off)."""
        self._pipeline = pipeline
        self._prompts = prompts
        self.base_model = base_model
        self.created = int(time.time())
        self._sink = sink

    def _adapter(self, model: str) -> str | None:
        """The adapter ``model`` names; None for the base model (its id or "base")."""
        return None if model in (self.base_model, BASE_TARGET) else model

    def _echo(self, model: str) -> str:
        """The ``model`` of the answer: the adapter, or the base model's id."""
        return self.base_model if self._adapter(model) is None else model

    async def list_models(self, tenant: Tenant | None) -> ModelList:
        """The base model (if the tenant may use it) and every adapter visible to the caller."""
        owner = tenant.name if tenant is not None else None
        listing = await asyncio.to_thread(self._pipeline.resolver.listing, owner)
        cards = []
        if tenant is None or tenant.policy.allow_base_model:
            cards.append(ModelCard(id=self.base_model, created=self.created, owned_by="loraswap",
                                   loraswap=ModelExtension(kind="base", task=GENERATIVE)))
        cards += [ModelCard(id=item.name, created=self.created,
                            owned_by=item.key.tenant if item.key and item.key.tenant
                            else "loraswap",
                            loraswap=ModelExtension(kind="adapter", task=str(item.task)))
                  for item in listing]
        return ModelList(data=cards)

    async def model_card(self, model: str, tenant: Tenant | None) -> ModelCard:
        """The entry of ``model`` (an adapter, the base id or "base")."""
        wanted = self.base_model if model == BASE_TARGET else model
        for card in (await self.list_models(tenant)).data:
            if card.id == wanted:
                return card
        raise AdapterNotFoundError(model)

    def _max_tokens(self, requested: int | None, field: str) -> int:
        limit = self._prompts.limits.max_new_tokens
        if requested is None:
            return limit  # clipped to the room left in context by PromptBuilder.sampling
        if requested > limit:
            raise InvalidRequestError(
                f"{field}={requested} exceeds the limit {limit} (LORASWAP_MAX_NEW_TOKENS_LIMIT)")
        return requested

    async def completion(self, body: CompletionRequest, request: Request,
                         tenant: Tenant | None) -> BaseModel | StreamingResponse:
        """Complete raw-text prompts (no chat template)."""
        prompts = prompt_list(body.prompt)
        tokenizer = self._prompts.tokenizer

        def tokenize() -> list[list[int]]:
            return [self._prompts.from_ids(p) if isinstance(p, list)
                    else self._prompts.from_text(p, raw=True) for p in prompts]

        plan = OpenAIPlan(
            body=body, model=self._echo(body.model), adapter=self._adapter(body.model),
            chat=False,
            max_tokens=self._max_tokens(body.max_tokens, "max_tokens"),
            tokenize=tokenize, prompts=self._prompts, num_prompts=len(prompts),
            texts=[p if isinstance(p, str) else tokenizer.decode(p) for p in prompts]
            if self._sink is not None else [], sink=self._sink,
            logprobs=body.logprobs, echo=bool(body.echo))
        return await self._pipeline.answer(request, tenant, plan)

    async def chat(self, body: ChatCompletionRequest, request: Request,
                   tenant: Tenant | None) -> BaseModel | StreamingResponse:
        """Answer a conversation rendered with the base model's chat template."""
        messages, tools = template_messages(body.messages, body.tools,
                                            self._prompts.renders_tools)
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        plan = OpenAIPlan(
            body=body, model=self._echo(body.model), adapter=self._adapter(body.model),
            chat=True,
            max_tokens=self._max_tokens(body.max_completion_tokens or body.max_tokens, field),
            tokenize=lambda: [self._prompts.from_messages(messages, tools)],
            prompts=self._prompts, num_prompts=1, texts=[json.dumps(messages)], sink=self._sink,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            tools=bool(body.tools) and body.tool_choice != "none")
        return await self._pipeline.answer(request, tenant, plan)

