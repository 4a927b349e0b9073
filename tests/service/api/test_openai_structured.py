"""Structured output through the official ``openai`` client against a real server on
loopback: ``chat.completions.parse`` with a pydantic model, ``json_object``, completions
with a schema, and a 400 naming an unsupported construct."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field


class Address(BaseModel):
    city: str = Field(max_length=10)
    zip_code: int = Field(ge=10000, le=99999)


class Person(BaseModel):
    name: str = Field(max_length=10)
    mood: Literal["happy", "sad"]
    addresses: list[Address] = Field(max_length=2)


@pytest.fixture
def client(live_server, make_adapter):  # type: ignore[no-untyped-def]
    make_adapter("alpha", rank=4, seed=1)
    server = live_server(max_new_tokens_limit=200)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    yield client
    client.close()


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    for seed in range(4):
        completion = client.chat.completions.parse(
            model="alpha", messages=[{"role": "user", "content": "describe someone"}],
            response_format=Person, max_completion_tokens=200, temperature=1.0, seed=seed)
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Person)


def test_json_object_and_completions_schema(client: openai.OpenAI) -> None:
    """json_object on the tiny random model: its strings may run to the length limit, so
    a finished answer must parse and a cut one must be the start of an object."""
    chat = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "json please"}], n=3,
        response_format={"type": "json_object"}, max_completion_tokens=150, seed=3)
    for choice in chat.choices:
        content = choice.message.content or ""
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(content), dict)
        else:
            assert content.startswith("{")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "integer", "maximum": 9}},
              "required": ["ok", "n"], "additionalProperties": False}
    text = client.completions.create(
        model="alpha", prompt="the answer:", max_tokens=60, temperature=0.7, seed=1,
        extra_body={"response_format": {"type": "json_schema",
                                        "json_schema": {"name": "r", "schema": schema}}})
    jsonschema.validate(json.loads(text.choices[0].text), schema)


def test_unsupported_schema_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="uniqueItems"):
        client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {
                "name": "s", "schema": {"type": "array", "uniqueItems": True}}})
