"""Tool definitions, tool choices and tool calls of the OpenAI chat API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class FunctionDef(BaseModel):
    """A function the model may call; ``parameters`` is a JSON Schema of its arguments."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = Field(default=None, description="Enforced whatever its value.")


class ToolDef(BaseModel):
    """One entry of ``tools``."""

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    """The function a named ``tool_choice`` forces."""

    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``."""

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    """A call's function name and its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    """One tool call of an assistant message (in a request's history, or generated)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallDelta(BaseModel):
    """A tool call in a streamed chunk (sent whole, in one delta)."""

    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall
