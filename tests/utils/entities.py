"""An oracle for entity spans that shares no code with the service: seqeval's lenient
chunking of per-token BIO tags, mapped to characters and trimmed by plain string rules."""

from __future__ import annotations

import string
from typing import NamedTuple

from seqeval.metrics.sequence_labeling import get_entities

EDGE = string.whitespace + string.punctuation


class Span(NamedTuple):
    """One expected entity and the token positions it was chunked from."""

    text: str
    label: str
    start: int
    end: int
    tokens: range


def expected_spans(text: str, offsets: list[tuple[int, int]], tags: list[str]) -> list[Span]:
    """Each entity; tokens covering no characters (special tokens) count as ``O``; spans
    lose edge whitespace and punctuation."""
    plain = [tag if start < end else "O" for (start, end), tag in zip(offsets, tags, strict=True)]
    spans = []
    for label, first, last in get_entities(plain):
        start, end = offsets[first][0], offsets[last][1]
        while start < end and text[start] in EDGE:
            start += 1
        while end > start and text[end - 1] in EDGE:
            end -= 1
        if start < end:
            spans.append(Span(text[start:end], label, start, end, range(first, last + 1)))
    return spans
