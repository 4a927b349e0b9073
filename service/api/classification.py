"""Inputs and outputs of seq-cls / token-cls adapters on ``/v1/predict``.

Tokenization contract: a classification input is tokenized exactly as it is sent, with
the tokenizer's own ``add_special_tokens`` default and *no* chat template, because the
trainer tokenizes its training texts the same way (``tokenizer(text)``); any other
rendering would feed the head token sequences it never saw. The one exception is a
token-cls adapter with ``text_split: words``: its text is first split into words and
punctuation and joined with single spaces (:class:`loraswap.adapters.words.SplitText`), as its
training sentences were, and the token offsets are mapped back onto the text as sent.

token-cls answers entities: each token's most probable tag, BIO tags merged into spans
the way seqeval's default (lenient) mode does, with character offsets from the fast
tokenizer's offset mapping. For drift it also reads one tag per *word* (the tag of the
word's first token, as training evaluates and profiles a tagger): a word is a piece of
the word split (:func:`loraswap.adapters.words.split_words`), the words token-cls feedback tags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loraswap.adapters.words import WORD_PIECE, SplitText
from loraswap.core.errors import ConfigurationError, InvalidRequestError
from loraswap.service.api.prompts import PromptLimits
from loraswap.service.api.protocol import Entity, SequenceClassOutput, TokenClassOutput
from loraswap.service.drift.records import WordPredictions
from loraswap.service.errors import InputTooLongError


@dataclass(frozen=True)
class EncodedInput:
    """One classification input: its text, token ids and each token's character span."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]] | None = None
    word_starts: list[int] | None = None  # token-cls: the first token of each word


def word_starts(text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Positions of the tokens that begin a word of ``text`` (the text as tokenized): a
    token whose first non-space character opens a piece of the word split (runs of letters
    and digits, every other visible character alone; :mod:`loraswap.adapters.words`). Special
    tokens (empty spans) and spaces alone begin none."""
    openings = {match.start() for match in WORD_PIECE.finditer(text)}
    starts = []
    for position, (start, end) in enumerate(spans):
        first = start
        while first < end and text[first].isspace():
            first += 1
        if first < end and first in openings:
            starts.append(position)
    return starts


def encode_input(tokenizer: Any, text: str, limits: PromptLimits, *, offsets: bool,
                 words: bool = False) -> EncodedInput:
    """Tokenize ``text`` (see the module docstring); ``offsets`` for token-cls, ``words``
    for a ``text_split: words`` adapter."""
    if offsets and not getattr(tokenizer, "is_fast", False):
        raise ConfigurationError(
            "token-cls adapters need a fast tokenizer (character offsets); the base model's "
            f"tokenizer {type(tokenizer).__name__} is not one")
    limits.check_text_size(text)  # before splitting or tokenizing anything
    split = SplitText.of(text) if words else None
    encoded = tokenizer(split.joined if split else text, return_offsets_mapping=offsets)
    ids = [int(i) for i in encoded["input_ids"]]
    if not ids:
        raise InvalidRequestError("the input is empty")
    # No token is generated, so the whole context is the input's.
    limit = min(limits.max_input_tokens, limits.max_model_len)
    if len(ids) > limit:
        raise InputTooLongError(
            f"the input has {len(ids)} tokens, more than the limit of {limit} "
            "(LORASWAP_MAX_INPUT_TOKENS)")
    spans = [(int(s), int(e)) for s, e in encoded["offset_mapping"]] if offsets else None
    starts = None if spans is None else word_starts(split.joined if split else text, spans)
    if spans is not None and split is not None:
        spans = [split.original_span(s, e) for s, e in spans]
    return EncodedInput(text=text, ids=ids, offsets=spans, word_starts=starts)


def sequence_output(probs: list[float], labels: list[str]) -> SequenceClassOutput:
    """The most probable label (the first on a tie) and every label's probability."""
    best = max(range(len(probs)), key=probs.__getitem__)
    return SequenceClassOutput(label=labels[best],
                               scores=dict(zip(labels, probs, strict=True)))


def split_tag(tag: str) -> tuple[str, str | None]:
    """``("B", "PER")`` for ``"B-PER"``; ``("O", None)`` for ``"O"``.

    B/I/E/S prefixes are understood (IOB2 and IOBES); a tag without one (``"PER"``,
    ``"LABEL_3"``) is taken as ``I-<tag>``: consecutive tokens of that type form one span.
    """
    if tag == "O":
        return "O", None
    prefix, dash, kind = tag.partition("-")
    if dash and kind and prefix in ("B", "I", "E", "S"):
        return prefix, kind
    return "I", tag


# Characters that never open (close) a name: trimmed from a span's start (end). Raw text
# glues punctuation to words ("coli (APC)"), while tagging corpora (CoNLL) space it out,
# so a tagger often extends a span over the sub-token that carries the punctuation.
_NOT_AT_START = set(",.;:!?-)]}")
_NOT_AT_END = set(",.;:!?-([{")
_BRACKETS = {"(": ")", "[": "]", "{": "}"}


def trim_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``start, end`` without edge whitespace, edge punctuation and unbalanced brackets.

    A leading opening bracket stays when the span also closes it, and a trailing closing
    bracket stays when the span opened it (``"Wiskott-Aldrich syndrome (WAS)"``).
    """
    while True:
        before = (start, end)
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end and (text[start] in _NOT_AT_START or (
                text[start] in _BRACKETS and _BRACKETS[text[start]] not in text[start:end])):
            start += 1
        if end > start and (text[end - 1] in _NOT_AT_END or (
                text[end - 1] in _BRACKETS.values()
                and not any(o in text[start:end] for o, c in _BRACKETS.items()
                            if c == text[end - 1]))):
            end -= 1
        if (start, end) == before:
            return start, end


@dataclass
class _Span:
    label: str
    start: int
    end: int
    scores: list[float] = field(default_factory=list)


def merge_entities(text: str, offsets: list[tuple[int, int]], tags: list[str],
                   scores: list[float]) -> list[Entity]:
    """Spans of consecutive tagged tokens, like seqeval's lenient ``get_entities``.

    B-X (or S-X) starts a span; I-X (or E-X) continues a span of type X and starts a new
    one after O or after another type; a span ends after E-X or S-X. Tokens that cover no
    characters (special tokens) end a span. ``start`` skips the leading whitespace that
    byte-level BPE tokens carry (the 'Ġ' space), and the span is trimmed of edge
    punctuation (:func:`trim_span`), so ``text == input[start:end]`` is the entity itself.
    ``score`` is the mean probability of the span's token tags.
    """
    spans: list[_Span] = []
    current: _Span | None = None
    for (start, end), tag, score in zip(offsets, tags, scores, strict=True):
        prefix, kind = split_tag(tag)
        if kind is None or start >= end:
            current = None
            continue
        if prefix in ("B", "S") or current is None or current.label != kind:
            current = _Span(kind, start, end)
            spans.append(current)
        current.end = max(current.end, end)
        current.scores.append(score)
        if prefix in ("E", "S"):
            current = None
    entities: list[Entity] = []
    for span in spans:
        start, end = trim_span(text, span.start, span.end)
        if start == end:
            continue  # whitespace or punctuation only: nothing to label
        entities.append(Entity(text=text[start:end], label=span.label, start=start,
                               end=end, score=sum(span.scores) / len(span.scores)))
    return entities


def token_output(encoded: EncodedInput, probs: list[list[float]], labels: list[str],
                 ) -> TokenClassOutput:
    """Entities of one input from its per-token label probabilities."""
    if encoded.offsets is None:  # pragma: no cover - token-cls inputs are encoded with them
        raise ValueError("token-cls output needs the input's offsets")
    best = [max(range(len(row)), key=row.__getitem__) for row in probs]
    return TokenClassOutput(entities=merge_entities(
        encoded.text, encoded.offsets, [labels[i] for i in best],
        [row[i] for row, i in zip(probs, best, strict=True)]))


def word_predictions(encoded: EncodedInput, probs: list[list[float]], labels: list[str],
                     ) -> WordPredictions:
    """Drift signals of one token-cls input: each word's tag (its first token's most
    probable tag) and the mean over words of that tag's probability."""
    rows = [probs[i] for i in encoded.word_starts or [] if i < len(probs)]
    best = [max(range(len(row)), key=row.__getitem__) for row in rows]
    confidence = (sum(row[i] for row, i in zip(rows, best, strict=True)) / len(rows)
                  if rows else None)
    return WordPredictions(tuple(labels[i] for i in best), confidence)
