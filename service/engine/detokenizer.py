"""Incremental detokenization with stop strings, for streaming and final outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the engine needs."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str:
        """Token ids to text."""
        ...


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
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if self.text.endswith(stop[:size]):
                    longest = max(longest, size)
                    break
        return longest

    def _emit(self, upto: int) -> str:
        delta = self.text[self.emitted : upto]
        self.emitted = max(self.emitted, upto)
        return delta
