"""OpenAI request fields turned into what the engine takes: the prompts of a completions
request (texts or token ids) and the sampling controls beyond temperature and top_p."""

from __future__ import annotations

from typing import Any

from loraswap.core.errors import InvalidRequestError
from loraswap.service.api.protocol_openai import SamplingFields


def sampling_controls(body: SamplingFields, vocab: int) -> dict[str, Any]:
    """The request's penalties, cuts, bias and stop tokens as :class:`SamplingParams`
    fields; token ids outside the vocabulary are a 400 naming them."""
    bias: list[tuple[int, float]] = []
    for key, value in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequestError(f"logit_bias key {key!r} is not a token id") from None
        bias.append((token, value))
    stop_ids = list(body.stop_token_ids or [])
    for name, ids in (("logit_bias", [t for t, _ in bias]), ("stop_token_ids", stop_ids)):
        outside = sorted({t for t in ids if not 0 <= t < vocab})
        if outside:
            raise InvalidRequestError(
                f"{name}: token ids {outside[:8]} are outside the vocabulary (0..{vocab - 1})")
    return {
        "logit_bias": tuple(bias), "stop_token_ids": tuple(stop_ids),
        "presence_penalty": body.presence_penalty or 0.0,
        "frequency_penalty": body.frequency_penalty or 0.0,
        "repetition_penalty": 1.0 if body.repetition_penalty is None else body.repetition_penalty,
        "top_k": max(body.top_k or 0, 0), "min_p": body.min_p or 0.0,
    }


def prompt_list(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The prompts of a completions request: texts or token-id lists."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequestError("prompt must not be an empty list")
    if all(isinstance(p, int) for p in prompt):
        return [[int(p) for p in prompt]]  # type: ignore[arg-type]
    out: list[str | list[int]] = []
    for item in prompt:
        if isinstance(item, int):
            raise InvalidRequestError("prompt mixes token ids and texts")
        out.append(item)
    return out
