"""Word splitting shared by NER training and serving (``text_split: words``).

Tagging corpora are written one word per line, with punctuation as words of its own:
NCBI-disease has ``ataxia - telangiectasia ( A - T )`` where a user sends
``ataxia-telangiectasia (A-T)``. A tagger trained on the first and served the second sees
token sequences it never saw. So both sides split text the same way: runs of letters and
digits, and every other visible character alone, joined again with single spaces.
Training splits each sentence's words joined by spaces (a no-op for corpora already split
like this); serving splits the raw input. Both map token offsets back with
:meth:`SplitText.original_span`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WORD_PIECE = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class SplitText:
    """A text rewritten as its pieces joined by single spaces, and the way back."""

    original: str
    joined: str
    # For each character of ``joined``: its index in ``original`` (-1 for added spaces).
    origin: tuple[int, ...]

    @classmethod
    def of(cls, text: str) -> SplitText:
        """Split ``text`` into pieces (see the module docstring)."""
        parts: list[str] = []
        origin: list[int] = []
        for match in WORD_PIECE.finditer(text):
            if parts:
                parts.append(" ")
                origin.append(-1)
            parts.append(match.group())
            origin.extend(range(match.start(), match.end()))
        return cls(text, "".join(parts), tuple(origin))

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of ``original`` that ``joined[start:end]`` covers (added spaces left
        out); ``(i, i)`` when it covers only added spaces."""
        inside = [self.origin[i] for i in range(start, min(end, len(self.origin)))
                  if self.origin[i] >= 0]
        if not inside:
            anchor = next((o for o in self.origin[start:] if o >= 0), len(self.original))
            return anchor, anchor
        return inside[0], inside[-1] + 1


def split_words(text: str) -> list[str]:
    """The words of ``text`` as :class:`SplitText` splits it: what a token-cls feedback's
    ``labels`` align with, one tag per word, and what retraining trains them as."""
    return WORD_PIECE.findall(text)
