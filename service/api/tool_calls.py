"""Tool calls on chat: the tools shown to the model, the grammar its call is generated
under, and the call read back out of the generated text.

A call is generated as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the
Hermes format most open chat templates use), under a grammar whose ``arguments`` follow the
named function's ``parameters`` schema, so they always validate. ``tool_choice``:

- ``none``: free text, no grammar (the tools are still shown);
- ``auto``: free text or one call, as the model decides (text may not start with ``<``);
- ``required``: one call of any of the tools; a named function: one call of that function.

One call per turn (``parallel_tool_calls`` changes nothing). A base model whose chat
template renders tools gets them through it; otherwise they are described in a system
message, and earlier calls and tool results are written in the same tagged format.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from loraswap.core.errors import InvalidRequestError
from loraswap.service.api.protocol_openai import OpenAIMessage
from loraswap.service.api.protocol_tools import (
    FunctionCall,
    NamedToolChoice,
    ToolCall,
    ToolChoice,
    ToolDef,
)
from loraswap.service.engine.grammar import JSON_OPTIONS, GrammarSpec

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def _call_schema(tool: ToolDef) -> dict[str, Any]:
    params = tool.function.parameters or {"type": "object", "properties": {}}
    return {"type": "object", "properties": {"name": {"const": tool.function.name},
                                             "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False}


def tool_grammar(tools: list[ToolDef], choice: ToolChoice | None) -> GrammarSpec | None:
    """The grammar of the assistant's turn (None: free text)."""
    if not tools or choice == "none":
        return None
    chosen = tools
    if isinstance(choice, NamedToolChoice):
        chosen = [t for t in tools if t.function.name == choice.function.name]
        if not chosen:
            raise InvalidRequestError(
                f"tool_choice names {choice.function.name!r}, which is not in tools")
    schemas = [_call_schema(t) for t in chosen]
    schema: dict[str, Any] = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    schema = {**schema, "x-guidance": JSON_OPTIONS}
    call = f'call: "{OPEN}" %json {json.dumps(schema)} "{CLOSE}"'
    if choice in (None, "auto"):
        return GrammarSpec("lark", f"start: call | text\n{call}\ntext: /[^<][\\s\\S]*/\n")
    return GrammarSpec("lark", f"start: call\n{call}\n")


def parse_tool_call(text: str) -> ToolCall | None:
    """The call in a generated turn (None: the turn is plain text)."""
    stripped = text.strip()
    if not (stripped.startswith(OPEN) and stripped.endswith(CLOSE)):
        return None
    try:
        body = json.loads(stripped[len(OPEN): -len(CLOSE)])
    except json.JSONDecodeError:
        return None
    if not isinstance(body, dict) or "name" not in body:
        return None
    return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(
        name=str(body["name"]), arguments=json.dumps(body.get("arguments", {}))))


def tools_system_text(tools: list[ToolDef]) -> str:
    """The tools described for a chat template that does not render them."""
    listed = "\n".join(json.dumps(t.function.model_dump(exclude_none=True),
                                  separators=(",", ":")) for t in tools)
    return (f"<tools>\n{listed}\n</tools>\nTo call a tool, answer only "
            f'{OPEN}{{"name": ..., "arguments": {{...}}}}{CLOSE}')


def call_text(calls: list[ToolCall]) -> str:
    """Earlier calls of the conversation, in the format the model generates them."""
    parts = []
    for call in calls:
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError:
            raise InvalidRequestError(
                f"tool call {call.id!r}: arguments are not valid JSON") from None
        parts.append(f"{OPEN}{json.dumps({'name': call.function.name, 'arguments': arguments})}"
                     f"{CLOSE}")
    return "\n".join(parts)


def tool_result_text(content: str, call_id: str | None) -> str:
    """A ``role: tool`` message as a user turn (templates without tool support)."""
    label = f' id="{call_id}"' if call_id else ""
    return f"<tool_response{label}>\n{content}\n</tool_response>"


def template_messages(messages: list[OpenAIMessage], tools: list[ToolDef] | None,
                      native: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The conversation for the chat template, and the ``tools`` argument to give it
    (``native``: the template renders tools and tool turns itself)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        entry: dict[str, Any] = message.as_template_message()
        if message.role == "tool":
            if not native:
                entry = {"role": "user",
                         "content": tool_result_text(message.text, message.tool_call_id)}
            elif message.tool_call_id:
                entry["tool_call_id"] = message.tool_call_id
        elif message.tool_calls:
            if native:
                entry["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {
                        "name": c.function.name, "arguments": json.loads(c.function.arguments)}}
                    for c in message.tool_calls]
            else:
                entry["content"] = "\n".join(
                    t for t in (message.text, call_text(message.tool_calls)) if t)
        out.append(entry)
    if not tools:
        return out, None
    if native:
        return out, [t.model_dump(exclude_none=True) for t in tools]
    described = tools_system_text(tools)
    if out and out[0]["role"] == "system":
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{described}"}
    else:
        out.insert(0, {"role": "system", "content": described})
    return out, None
