"""Incremental detokenization with stop strings, for streaming and final outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

MAX_STOP_CHARS = 256
"""Longest stop string a request may set (the API refuses longer ones with a 400)."""


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the engine needs."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str:
        """Token ids to text."""
        ...


@dataclass(frozen=True)
class StopString:
    """A stop string with its KMP failure table, so partial matches cost O(its length)."""

    text: str
    failure: tuple[int, ...]
    chars: frozenset[str]

    @classmethod
    def of(cls, text: str) -> StopString:
        """Precompute the failure table (longest proper border of each prefix)."""
        failure = [0] * len(text)
        border = 0
        for i in range(1, len(text)):
            while border and text[i] != text[border]:
                border = failure[border - 1]
            if text[i] == text[border]:
                border += 1
            failure[i] = border
        return cls(text, tuple(failure), frozenset(text))

    def partial_suffix(self, text: str) -> int:
        """Length of the longest proper prefix of this stop string that ``text`` ends with.

        One KMP pass over the last ``len(stop) - 1`` characters: linear in the stop
        string's length, where testing every prefix with ``endswith`` is quadratic.
        """
        if len(self.text) < 2 or not text or text[-1] not in self.chars:
            return 0
        state = 0
        for char in text[-(len(self.text) - 1):]:
            while state and self.text[state] != char:
                state = self.failure[state - 1]
            if self.text[state] == char:
                state += 1
            if state == len(self.text):  # a whole occurrence: keep the longest proper border
                state = self.failure[state - 1]
        return state


@dataclass
class IncrementalText:
    """Turns a growing list of token ids into text deltas; finds stop strings.

    Text that could still become a stop string, or that ends in an incomplete UTF-8
    sequence (decoded as U+FFFD), is held back until the next token decides it.
    """

    tokenizer: Tokenizer
    stop: tuple[str, ...]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    stopped: bool = False
    _stops: tuple[StopString, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._stops = tuple(StopString.of(s) for s in self.stop)

    def add(self, token_id: int, *, final: bool = False) -> str:
        """Append a token; return the text newly safe to show."""
        self.token_ids.append(token_id)
        return self._advance(final)

    def flush(self) -> str:
        """Everything not yet shown (at the end of generation)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.stopped:
            return ""
        self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cut = self._stop_position()
        if cut is not None:
            self.text = self.text[:cut]
            self.stopped = True
            return self._emit(len(self.text))
        if final:
            return self._emit(len(self.text))
        safe = len(self.text)
        if self.text.endswith("\ufffd"):
            safe = len(self.text.rstrip("\ufffd"))
        safe = min(safe, len(self.text) - self._partial_stop_suffix())
        return self._emit(max(safe, self.emitted))

    def _stop_position(self) -> int | None:
        # Search only where a stop string could newly appear.
        positions = []
        for stop in self.stop:
            start = max(0, self.emitted - len(stop))
            found = self.text.find(stop, start)
            if found != -1:
                positions.append(found)
        return min(positions) if positions else None

    def _partial_stop_suffix(self) -> int:
        return max((stop.partial_suffix(self.text) for stop in self._stops), default=0)

    def _emit(self, upto: int) -> str:
        delta = self.text[self.emitted : upto]
        self.emitted = max(self.emitted, upto)
        return delta
