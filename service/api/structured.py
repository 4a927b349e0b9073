"""What a request's ``response_format`` (and, on chat, its ``tools``) asks the output to
match, as a :class:`loraswap.service.engine.grammar.GrammarSpec`."""

from __future__ import annotations

from loraswap.core.errors import InvalidRequestError
from loraswap.service.api.protocol_openai import ChatCompletionRequest, SamplingFields
from loraswap.service.api.tool_calls import tool_grammar
from loraswap.service.engine.grammar import GrammarSpec


def response_grammar(body: SamplingFields) -> GrammarSpec | None:
    """The grammar of ``response_format``, or of a chat's tool call (None: free text)."""
    if isinstance(body, ChatCompletionRequest) and body.tools:
        return tool_grammar(body.tools, body.tool_choice)
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if body.ignore_eos:
        raise InvalidRequestError(
            "ignore_eos cannot be combined with response_format: a finished JSON answer "
            "allows only the end of the sequence")
    if fmt.type == "json_object":
        return GrammarSpec("json_object")
    assert fmt.json_schema is not None  # checked by ResponseFormat
    return GrammarSpec.json_schema(fmt.json_schema.schema_)
