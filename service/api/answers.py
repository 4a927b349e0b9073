"""Response plumbing both API families share: ids, usage, finish reasons, SSE framing."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence

from pydantic import BaseModel

from loraswap.service.api.protocol import Usage
from loraswap.service.api.protocol_openai import FinishReason
from loraswap.service.engine.requests import GenerationEvent


def new_request_id(prefix: str) -> str:
    """A fresh answer id, ``<prefix>-<24 hex>`` (``pred``, ``cmpl``, ``chatcmpl``).

    The first 8 hex digits are the UNIX second the id was minted, the other 16 are random:
    feedback finds a captured prediction's index entry in the bucket of that minute
    without any other lookup (:mod:`loraswap.service.drift.capture_index`).
    """
    return f"{prefix}-{int(time.time()) & 0xFFFFFFFF:08x}{secrets.token_hex(8)}"


def finish_reason(event: GenerationEvent) -> FinishReason:
    """The API's finish reason of a finished generation (only ``stop`` and ``length``)."""
    return "stop" if event.finish_reason == "stop" else "length"


def usage_of(results: Sequence[GenerationEvent]) -> Usage:
    """Token counts of finished generations, as the engine counted them."""
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion)


def prompt_usage(prompt_tokens: int) -> Usage:
    """Usage of a request that generates nothing (classification)."""
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens)


def _json(payload: BaseModel | dict[str, object], exclude: set[str] | None) -> str:
    if isinstance(payload, BaseModel):
        return json.dumps(payload.model_dump(mode="json", exclude=exclude), ensure_ascii=False)
    return json.dumps(payload, ensure_ascii=False)


def sse_event(event: str, payload: BaseModel | dict[str, object]) -> str:
    """A named server-sent event (the native API: ``token``, ``done``, ``error``)."""
    return f"event: {event}\ndata: {_json(payload, None)}\n\n"


def sse_data(payload: BaseModel | dict[str, object], *, exclude: set[str] | None = None,
             ) -> str:
    """An unnamed server-sent event (the OpenAI API's ``data: {chunk}``)."""
    return f"data: {_json(payload, exclude)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
"""The OpenAI stream's last event."""
