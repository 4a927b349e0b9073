"""Tool calls through the official ``openai`` client on a loopback server: a forced call
whose arguments validate against the function's schema, streamed and not, then the tool's
result sent back as a ``role: tool`` message for the next turn."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8},
                   "unit": {"enum": ["c", "f"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit", "days"], "additionalProperties": False}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "clock", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}},
        "required": ["zone"], "additionalProperties": False}}},
]


@pytest.fixture
def client(live_server):  # type: ignore[no-untyped-def]
    # The tiny tokenizer spends a token on every two characters or so of the tool list.
    server = live_server(max_new_tokens_limit=120, max_input_tokens=800, max_model_len=1024)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    yield client
    client.close()


def test_two_turn_conversation_with_a_tool_call(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather in paris?"}]
    first = client.chat.completions.create(
        model="base", messages=messages, tools=TOOLS, seed=2, max_completion_tokens=120,
        tool_choice={"type": "function", "function": {"name": "weather"}})
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.function.name == "weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    second = client.chat.completions.create(
        model="base", messages=messages, tools=TOOLS, tool_choice="none", seed=2,
        max_completion_tokens=8)
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content
    assert second.usage is not None and second.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]


def test_required_call_streamed_as_deltas(client: openai.OpenAI) -> None:
    for seed in range(3):
        stream = client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "time?"}], tools=TOOLS,
            tool_choice="required", seed=seed, max_completion_tokens=120, stream=True)
        names, arguments, reasons = [], "", []
        for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    names.append(delta.function.name if delta.function else None)
                    arguments += (delta.function.arguments or "") if delta.function else ""
                if choice.finish_reason:
                    reasons.append(choice.finish_reason)
        assert reasons == ["tool_calls"]
        assert len(names) == 1 and names[0] in {"weather", "clock"}
        schema = TOOLS[0 if names[0] == "weather" else 1]["function"]["parameters"]
        jsonschema.validate(json.loads(arguments), schema)


def test_auto_gives_text_or_a_valid_call(client: openai.OpenAI) -> None:
    for seed in range(4):
        answer = client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
            tool_choice="auto", seed=seed, max_completion_tokens=40, temperature=1.0)
        message = answer.choices[0].message
        if message.tool_calls:
            assert answer.choices[0].finish_reason == "tool_calls"
            json.loads(message.tool_calls[0].function.arguments)
        else:
            assert message.content and not message.content.startswith("<")


def test_unknown_named_tool_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="nope"):
        client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "x"}], tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}})
