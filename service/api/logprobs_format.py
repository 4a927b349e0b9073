"""The engine's token log-probabilities in the OpenAI answer shapes.

Token texts are each token decoded alone (as vLLM returns them); a character split across
tokens decodes to U+FFFD in each piece, so ``text_offset`` (cumulative lengths of those
texts) counts characters of the decoded pieces, exactly as vLLM's does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loraswap.service.api.protocol import Alternative, TokenLogprobOut
from loraswap.service.api.protocol_openai import (
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    TopLogprob,
)
from loraswap.service.engine.logits import TokenLogprob


class TokenTexts:
    """Decodes single token ids, each once per answer."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = str(self._tokenizer.decode([token]))
        return text


def completion_logprobs(texts: TokenTexts, tokens: Sequence[int],
                        entries: Sequence[TokenLogprob | None], offset: int,
                        ) -> CompletionLogprobs:
    """The legacy completions shape for ``tokens`` (an entry of None: the first prompt
    token, which nothing predicts); offsets start at ``offset`` characters."""
    pieces = [texts(t) for t in tokens]
    offsets = []
    for piece in pieces:
        offsets.append(offset)
        offset += len(piece)
    return CompletionLogprobs(
        tokens=pieces,
        token_logprobs=[None if e is None else e.logprob for e in entries],
        top_logprobs=[None if e is None else {texts(t): v for t, v in e.top} for e in entries],
        text_offset=offsets)


def chat_logprobs(texts: TokenTexts, entries: Sequence[TokenLogprob]) -> ChatLogprobs:
    """The chat shape: each token with its bytes and its alternatives."""

    def top(token: int, logprob: float) -> TopLogprob:
        text = texts(token)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

    return ChatLogprobs(content=[
        ChatTokenLogprob(**top(e.token, e.logprob).model_dump(),
                         top_logprobs=[top(t, v) for t, v in e.top])
        for e in entries])


def native_logprob(texts: TokenTexts, entry: TokenLogprob) -> TokenLogprobOut:
    """``/v1/predict``'s shape: ids and texts of the token and its alternatives."""
    return TokenLogprobOut(
        token_id=entry.token, token=texts(entry.token), logprob=entry.logprob,
        top=[Alternative(token_id=t, token=texts(t), logprob=v) for t, v in entry.top])
