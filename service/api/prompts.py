"""Turning request inputs into token ids, with the chat template and the length limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loraswap.core.errors import InvalidRequestError
from loraswap.service.engine.grammar import GrammarCompiler
from loraswap.service.engine.sampling import SamplingParams
from loraswap.service.errors import InputTooLongError

MAX_CHARS_PER_TOKEN = 32
"""A text longer than this many characters per allowed token is refused before any work:
no tokenizer of a served model packs more than a few characters into a token on average,
so such a text could never fit, and splitting or tokenizing it would only cost time."""


@dataclass(frozen=True)
class PromptLimits:
    """Token limits applied to every request."""

    max_input_tokens: int
    max_model_len: int
    max_new_tokens: int

    def check_text_size(self, text: str) -> None:
        """413 for a text too long to fit in ``max_input_tokens``, before tokenizing it."""
        limit = self.max_input_tokens * MAX_CHARS_PER_TOKEN
        if len(text) > limit:
            raise InputTooLongError(
                f"the input has {len(text)} characters; at most {limit} "
                f"({MAX_CHARS_PER_TOKEN} per token of LORASWAP_MAX_INPUT_TOKENS="
                f"{self.max_input_tokens}) are accepted")


class PromptBuilder:
    """Tokenizes prompts and conversations for the base model, enforcing the limits."""

    def __init__(self, tokenizer: Any, limits: PromptLimits) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self._grammars: GrammarCompiler | None = None

    @property
    def grammars(self) -> GrammarCompiler:
        """Structured-output grammars for this tokenizer (built at first use, about 0.3 s;
        used on the tokenizer thread like everything here)."""
        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer)
        return self._grammars

    def from_text(self, text: str, *, raw: bool) -> list[int]:
        """A string prompt: as-is when ``raw`` (or without a template), else one user turn."""
        self.limits.check_text_size(text)
        if raw or not self.has_chat_template:
            return self._check(list(self.tokenizer(text)["input_ids"]))
        return self.from_messages([{"role": "user", "content": text}])

    def from_ids(self, ids: list[int]) -> list[int]:
        """A prompt given as token ids (OpenAI completions): checked against the
        vocabulary and the length limits, used as it is."""
        vocab = len(self.tokenizer)
        outside = sorted({t for t in ids if not 0 <= t < vocab})
        if outside:
            raise InvalidRequestError(
                f"prompt token ids {outside[:8]} are outside the vocabulary (0..{vocab - 1})")
        return self._check(list(ids))

    @property
    def renders_tools(self) -> bool:
        """Whether the chat template renders ``tools`` (and tool turns) itself."""
        return "tools" in str(getattr(self.tokenizer, "chat_template", "") or "")

    def from_messages(self, messages: list[dict[str, Any]],
                      tools: list[dict[str, Any]] | None = None) -> list[int]:
        """A conversation rendered with the chat template, ready for the assistant's turn
        (``tools``: given to a template that renders them)."""
        if not messages:
            raise InvalidRequestError("messages must not be empty")
        if not self.has_chat_template:
            raise InvalidRequestError("the base model has no chat template; send raw text")
        self.limits.check_text_size("".join(str(m.get("content") or "") for m in messages))
        extra = {"tools": tools} if tools else {}
        rendered = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **extra
        )
        ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return self._check(list(ids))

    def sampling(self, prompt_len: int, *, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int | None, stop: list[str], ignore_eos: bool,
                 **controls: Any) -> SamplingParams:
        """Sampling parameters, with ``max_new_tokens`` clipped to the room left in context;
        ``controls``: further :class:`SamplingParams` fields (penalties, logprobs, ...)."""
        if max_new_tokens > self.limits.max_new_tokens:
            raise InvalidRequestError(
                f"max_new_tokens={max_new_tokens} exceeds the limit {self.limits.max_new_tokens}"
            )
        room = self.limits.max_model_len - prompt_len
        return SamplingParams(
            max_new_tokens=min(max_new_tokens, room), temperature=temperature, top_p=top_p,
            seed=seed, stop=tuple(stop), ignore_eos=ignore_eos, **controls,
        )

    def _check(self, ids: list[int]) -> list[int]:
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        limit = min(self.limits.max_input_tokens, self.limits.max_model_len - 1)
        if len(ids) > limit:
            raise InputTooLongError(
                f"the prompt has {len(ids)} tokens, more than the limit of {limit} "
                "(LORASWAP_MAX_INPUT_TOKENS)"
            )
        return ids
