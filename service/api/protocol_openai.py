"""Request and response bodies of the OpenAI-compatible API (completions, chat, models).

Nothing a client sends is silently dropped: a field that is neither declared here nor in
:data:`_ACCEPTED_NOOP` (OpenAI bookkeeping fields that change no output, such as ``user``)
is a 400 naming it, ``extra_body`` fields of the openai client included; fields that OpenAI
defines but loraswap cannot honour are declared so that a non-neutral value is a 400 naming
the field. The README's field table lists every field of both endpoints.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from loraswap.service.api.protocol import Seed, UnicodeText, Usage
from loraswap.service.api.protocol_tools import ToolCall, ToolCallDelta, ToolChoice, ToolDef
from loraswap.service.engine.detokenizer import MAX_STOP_CHARS

ModelTask = str
"""What a model does: "causal-lm", "seq-cls" or "token-cls" (``adapters.package.TaskKind``)."""

# Values of unsupported OpenAI fields that ask for nothing, so SDK defaults still pass.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "suffix": (None, ""), "best_of": (None, 1),
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,),
}


_ACCEPTED_NOOP = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls",
                            "reasoning_effort", "safety_identifier",
                            "prompt_cache_key"})
"""Fields OpenAI defines that change nothing in an answer here (billing and bookkeeping
tags, and ``parallel_tool_calls`` without tools): accepted, documented as having no effect."""

MAX_N = 16


def _refuse_unsupported(value: Any, info: ValidationInfo) -> Any:
    if value not in _NEUTRAL[str(info.field_name)]:
        raise ValueError(f"{info.field_name}={value!r} is not supported by loraswap")
    return value


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema the answer must validate against."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = Field(default=None, description="Enforced whatever its value.")


class ResponseFormat(BaseModel):
    """``response_format``: free text, any JSON object, or a JSON Schema, enforced while
    decoding (:mod:`loraswap.service.engine.grammar`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("response_format: json_schema goes with type \"json_schema\" "
                             "(and only with it)")
        return self


class StreamOptions(BaseModel):
    """``stream_options``: whether a last chunk carries the token usage."""

    include_usage: bool | None = False


class SamplingFields(BaseModel):
    """Fields shared by completions and chat completions (OpenAI defaults)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="An adapter name, the base model's id, or \"base\".")
    temperature: float | None = Field(default=1.0, ge=0.0, le=2.0,
                                      description="0 = greedy; OpenAI's default is 1.")
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus mass.")
    n: int | None = Field(default=1, ge=1, le=MAX_N, description="Choices per prompt (1-16).")
    stop: str | list[str] | None = Field(default=None, description="Up to 16 stop strings.")
    seed: Seed | None = None
    stream: bool | None = Field(default=False, description="Answer with server-sent events.")
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(default=False, description="vLLM extra: generate past EOS.")
    logit_bias: dict[str, float] | None = Field(
        default=None, description="Token id (as a string) -> bias in [-100, 100], at most "
        "300 entries; ids are checked against the vocabulary.")
    presence_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=1.0, gt=0.0, le=10.0,
                                             description="vLLM extra; 1 = none.")
    top_k: int | None = Field(default=None, ge=-1, description="vLLM extra; 0 or -1 = none.")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, description="vLLM extra.")
    stop_token_ids: list[int] | None = Field(default=None, max_length=16,
                                             description="vLLM extra: token ids that stop.")
    response_format: ResponseFormat | None = Field(
        default=None, description="json_object / json_schema: enforced while decoding.")

    @model_validator(mode="after")
    def _no_unknown_fields(self) -> SamplingFields:
        unknown = sorted(set(self.model_extra or {}) - _ACCEPTED_NOOP)
        if unknown:
            raise ValueError(f"unsupported field(s) {', '.join(unknown)}: loraswap does not "
                             "implement them (see the README's OpenAI field table)")
        return self

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop strings")
        stops = [value] if isinstance(value, str) else value or []
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ValueError(f"each stop string may have at most {MAX_STOP_CHARS} characters")
        return value

    @property
    def stop_list(self) -> list[str]:
        """``stop`` as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    """Body of ``POST /v1/completions``: raw text prompts, no chat template."""

    prompt: UnicodeText | list[UnicodeText] | list[int] | list[list[int]] = Field(
        description="A prompt, a list of prompts, or token ids (one list or several).")
    max_tokens: int | None = Field(default=16, ge=1,
                                   description="Default 16; null: the room left in context.")
    logprobs: int | None = Field(default=None, ge=0, le=20,
                                 description="Top alternatives per token (0-20).")
    echo: bool | None = Field(default=False, description="Prepend the prompt to the text.")
    suffix: Any = None
    best_of: Any = None

    @field_validator("suffix", "best_of")
    @classmethod
    def _unsupported_completion(cls, value: Any, info: ValidationInfo) -> Any:
        return _refuse_unsupported(value, info)


class TextPart(BaseModel):
    """A text part of a message's content (the only kind of part supported)."""

    type: Literal["text"]
    text: UnicodeText


class OpenAIMessage(BaseModel):
    """One chat message; ``developer`` is OpenAI's newer name for ``system``."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: UnicodeText | list[TextPart] | None = None
    # An assistant turn's calls; a tool turn answers the call ``tool_call_id``.
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_or_calls(self) -> OpenAIMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self

    @property
    def text(self) -> str:
        """The content as one string."""
        content = self.content or ""
        return content if isinstance(content, str) else "\n".join(p.text for p in content)

    def as_template_message(self) -> dict[str, str]:
        """The message as the chat template expects it (tool turns: see tool_calls.py)."""
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text}


class ChatCompletionRequest(SamplingFields):
    """Body of ``POST /v1/chat/completions``: messages rendered with the chat template."""

    messages: list[OpenAIMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, description="Deprecated alias.")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Default: the room left in context, capped by "
        "LORASWAP_MAX_NEW_TOKENS_LIMIT.")
    logprobs: bool | None = Field(default=False, description="Return each token's logprob.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20,
                                     description="Alternatives per token (needs logprobs).")
    tools: list[ToolDef] | None = Field(default=None, max_length=64)
    tool_choice: ToolChoice | None = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        uses_tools = self.tools and self.tool_choice != "none"
        if uses_tools and self.response_format and self.response_format.type != "text":
            raise ValueError("response_format cannot be combined with tools")
        return self

    @field_validator("functions", "function_call", "audio", "modalities", "prediction")
    @classmethod
    def _unsupported_chat(cls, value: Any, info: ValidationInfo) -> Any:
        return _refuse_unsupported(value, info)


FinishReason = Literal["stop", "length", "tool_calls"]


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs of a completion choice (token texts, natural logs)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    """One generated text of a completion (or a piece of it, in a stream chunk)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class CompletionResponse(BaseModel):
    """Body of a completions answer, and of each streamed chunk (``text_completion``)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    """The generated assistant turn."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    """One alternative at a token's place (chat shape)."""

    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    """One generated token of a chat answer, with its ``top_logprobs`` alternatives."""

    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """``choices[i].logprobs`` of a chat answer or chunk."""

    content: list[ChatTokenLogprob]


class ChatChoice(BaseModel):
    """One generated assistant message."""

    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletionResponse(BaseModel):
    """Body of a chat completions answer."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """What a chunk adds to the message; the first one carries the role."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI's last chunk has ``"delta": {}``, not nulls.
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    """A piece of one choice of a streamed chat answer."""

    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One ``chat.completion.chunk`` server-sent event."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelExtension(BaseModel):
    """loraswap's facts about a model: base or adapter, and what it does."""

    kind: Literal["base", "adapter"]
    task: ModelTask


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    loraswap: ModelExtension


class ModelList(BaseModel):
    """Body of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
