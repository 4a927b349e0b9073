"""Request and response bodies of the OpenAI-compatible API (completions, chat, models).

Unknown request fields are ignored, as OpenAI SDKs send extras such as ``user``; fields that
OpenAI defines but loraswap cannot honour are declared so that a non-neutral value is a 400
naming the field instead of being silently dropped.
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
)

from loraswap.service.api.protocol import Seed, UnicodeText, Usage
from loraswap.service.engine.detokenizer import MAX_STOP_CHARS

ModelTask = str
"""What a model does: "causal-lm", "seq-cls" or "token-cls" (``adapters.package.TaskKind``)."""

# Values of unsupported OpenAI fields that ask for nothing, so SDK defaults still pass.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False),
    "suffix": (None, ""), "best_of": (None, 1), "logit_bias": (None, {}),
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
    "function_call": (None, "none"), "response_format": (None, {"type": "text"}),
    "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,),
}


def _refuse_unsupported(value: Any, info: ValidationInfo) -> Any:
    if value not in _NEUTRAL[str(info.field_name)]:
        raise ValueError(f"{info.field_name}={value!r} is not supported by loraswap")
    return value


class StreamOptions(BaseModel):
    """``stream_options``: whether a last chunk carries the token usage."""

    include_usage: bool | None = False


class SamplingFields(BaseModel):
    """Fields shared by completions and chat completions (OpenAI defaults)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="An adapter name, the base model's id, or \"base\".")
    temperature: float | None = Field(default=1.0, ge=0.0, le=2.0,
                                      description="0 = greedy; OpenAI's default is 1.")
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus mass.")
    n: int | None = Field(default=1, description="Choices per prompt; only 1 is supported.")
    stop: str | list[str] | None = Field(default=None, description="Up to 16 stop strings.")
    seed: Seed | None = None
    stream: bool | None = Field(default=False, description="Answer with server-sent events.")
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(default=False, description="vLLM extra: generate past EOS.")
    logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError(f"n={value} is not supported: only n=1")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop strings")
        stops = [value] if isinstance(value, str) else value or []
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ValueError(f"each stop string may have at most {MAX_STOP_CHARS} characters")
        return value

    @field_validator("logprobs", "logit_bias", "presence_penalty", "frequency_penalty")
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        return _refuse_unsupported(value, info)

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

    prompt: UnicodeText | list[UnicodeText] = Field(
        description="A prompt or a list of prompts.")
    max_tokens: int | None = Field(default=16, ge=1,
                                   description="Default 16; null: the room left in context.")
    echo: Any = None
    suffix: Any = None
    best_of: Any = None

    @field_validator("echo", "suffix", "best_of")
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

    role: Literal["system", "developer", "user", "assistant"]
    content: UnicodeText | list[TextPart]

    def as_template_message(self) -> dict[str, str]:
        """The message as the chat template expects it."""
        role = "system" if self.role == "developer" else self.role
        content = self.content
        if not isinstance(content, str):
            content = "\n".join(part.text for part in content)
        return {"role": role, "content": content}


class ChatCompletionRequest(SamplingFields):
    """Body of ``POST /v1/chat/completions``: messages rendered with the chat template."""

    messages: list[OpenAIMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, description="Deprecated alias.")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Default: the room left in context, capped by "
        "LORASWAP_MAX_NEW_TOKENS_LIMIT.")
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None

    @field_validator("top_logprobs", "tools", "tool_choice", "functions", "function_call",
                     "response_format", "audio", "modalities", "prediction")
    @classmethod
    def _unsupported_chat(cls, value: Any, info: ValidationInfo) -> Any:
        return _refuse_unsupported(value, info)


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    """One generated text of a completion (or a piece of it, in a stream chunk)."""

    index: int
    text: str
    logprobs: None = None
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
    content: str


class ChatChoice(BaseModel):
    """One generated assistant message."""

    index: int
    message: AssistantMessage
    logprobs: None = None
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

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI's last chunk has ``"delta": {}``, not nulls.
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    """A piece of one choice of a streamed chat answer."""

    index: int
    delta: ChatDelta
    logprobs: None = None
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
