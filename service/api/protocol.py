"""Request and response bodies of the native API (``/v1/predict``, health, errors)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from loraswap.adapters.package import TaskKind
from loraswap.core.identity import Version
from loraswap.service.engine.detokenizer import MAX_STOP_CHARS

# Sampling seeds feed a 64-bit generator (torch.Generator.manual_seed); larger ones overflow.
SEED_MAX = 2**64 - 1


def _no_lone_surrogates(value: str) -> str:
    """Refuse text that is not valid Unicode: a JSON ``\\ud800`` decodes to a lone surrogate,
    which the tokenizer (and every UTF-8 encoder after it) cannot encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"text holds a lone surrogate (U+{ord(value[exc.start]):04X} at character "
            f"{exc.start}); send valid Unicode"
        ) from None
    return value


UnicodeText = Annotated[str, AfterValidator(_no_lone_surrogates)]
"""A string that is valid Unicode (no lone surrogates)."""

Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description="Seed for reproducible sampling "
                                                            "(0 to 2^64 - 1).")]


class ChatMessage(BaseModel):
    """One turn of a conversation, rendered with the base model's chat template."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: UnicodeText


class PredictParameters(BaseModel):
    """Generation parameters; each request keeps its own. Refused for classification."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=64, ge=1, description="Most tokens to generate.")
    temperature: float = Field(default=0.0, ge=0.0, le=5.0, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: Seed | None = None
    stop: list[Annotated[UnicodeText, Field(max_length=MAX_STOP_CHARS)]] = Field(
        default_factory=list, max_length=16,
        description=f"Strings that end generation (not included); at most 16, each at most "
                    f"{MAX_STOP_CHARS} characters.")
    ignore_eos: bool = Field(default=False, description="Keep generating past end-of-sequence.")
    logprobs: int | None = Field(
        default=None, ge=0, le=20, description="Return each generated token's log-probability "
        "(after penalties/bias, before temperature) and this many best alternatives.")
    prompt_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="Return the prompt tokens' log-probabilities "
        "(the first is null) and this many best alternatives.")


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict``."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(default=None, description="Adapter name; null for the base.")
    inputs: UnicodeText | list[UnicodeText] | list[ChatMessage] = Field(
        description="A prompt, a batch of prompts, or one conversation (list of messages). "
                    "Classification adapters take a text or a list of texts, never templated.",
    )
    parameters: PredictParameters = Field(default_factory=PredictParameters)
    raw: bool = Field(
        default=False,
        description="Send string prompts as they are, without the chat template "
                    "(classification inputs always are).",
    )
    stream: bool = Field(default=False, description="Answer with server-sent events.")


class Alternative(BaseModel):
    """A token and its natural-log probability."""

    token_id: int
    token: str
    logprob: float


class TokenLogprobOut(Alternative):
    """A token's log-probability and the best alternatives at its place."""

    top: list[Alternative]


class PredictOutput(BaseModel):
    """One generated text (causal-lm)."""

    text: str
    tokens: int
    finish_reason: Literal["length", "stop"]
    logprobs: list[TokenLogprobOut] | None = Field(
        default=None, description="Only when parameters.logprobs was set.")
    prompt_logprobs: list[TokenLogprobOut | None] | None = Field(
        default=None, description="Only when parameters.prompt_logprobs was set.")

    @model_serializer(mode="wrap")
    def _omit_unasked(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A client that asked for no logprobs sees the output shape it always had.
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items()
                if not (k in ("logprobs", "prompt_logprobs") and v is None)}


class SequenceClassOutput(BaseModel):
    """The class of one input (seq-cls): the most probable label and every label's score."""

    label: str
    scores: dict[str, float] = Field(description="Softmax probability of each label.")


class Entity(BaseModel):
    """A labelled span of the input (token-cls): ``text == input[start:end]``."""

    text: str
    label: str = Field(description="Entity type, without the B-/I- prefix.")
    start: int = Field(description="Character offset of the first character.")
    end: int = Field(description="Character offset just past the last character.")
    score: float = Field(description="Mean probability of the span's token labels.")


class TokenClassOutput(BaseModel):
    """The entities found in one input (token-cls)."""

    entities: list[Entity]


class Usage(BaseModel):
    """Token counts of a request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class PredictResponse(BaseModel):
    """Body of a ``/v1/predict`` answer."""

    id: str
    adapter: str | None
    adapter_version: Version | None = Field(
        description="Version served (a registry number, or a development folder's tag, as a "
        "string like every loraswap answer); null for the base.")
    task: TaskKind
    outputs: list[PredictOutput | SequenceClassOutput | TokenClassOutput] = Field(
        description="One per input, in order; the shape depends on the task.")
    usage: Usage


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code`` and a message that names the problem."""

    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """Body of every native-API error."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a native router: each of ``statuses`` answers an
    :class:`ErrorResponse`."""
    return {status: {"model": ErrorResponse} for status in statuses}
