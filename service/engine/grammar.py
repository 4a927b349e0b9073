"""Structured output: grammars compiled once per schema, token masks computed per row.

The grammar engine is llguidance (``docs/structured-output.md`` compares it with xgrammar
and outlines-core on this CPU): a JSON Schema or a Lark grammar becomes a matcher whose
state follows one sequence; at each step it yields a bitmask of the tokens that keep the
output inside the grammar, and :class:`RowConstraint` sets the logits of every other token
to ``-inf`` before sampling. Only constrained rows pay for it: a free row of the same batch
is never touched (:mod:`loraswap.service.engine.sampling`).

Compilation happens off the engine thread (the API's tokenizer thread) and is cached per
grammar in a bounded LRU (:class:`GrammarCompiler`); the engine thread only copies a
compiled matcher (microseconds) and computes masks. Work is bounded three ways so one
tenant's hostile schema cannot stall the others: the schema's size in characters, the
grammar's size and lexer fuel at compile time (llguidance's ``LLParserLimits``; a schema
over them is a 400 ``unsupported_schema`` naming what was exceeded), and the fuel of each
mask step (a row over it fails alone).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import llguidance
import llguidance.hf
import torch

from loraswap.service.errors import RowFailedError, UnsupportedSchemaError

if TYPE_CHECKING:  # a TypedDict of the type stubs only
    from llguidance._lib import JsonCompileOptions

MAX_SCHEMA_CHARS = 65_536
"""Longest schema or grammar text accepted (characters, as canonical JSON)."""

CACHE_SIZE = 256
"""Compiled grammars kept (least recently used dropped first)."""

MAX_GRAMMAR_SIZE = 50_000
"""Symbols of the grammar's productions (llguidance's default is 500k)."""
INITIAL_LEXER_FUEL = 500_000
"""Regex-building fuel at compile (llguidance's default 1M, about 20 ms)."""
STEP_LEXER_FUEL = 100_000
"""Lexer fuel per mask step (default 200k, about 14 ms): a row over it fails alone."""
MAX_LEXER_STATES = 50_000
"""Lexer states of one grammar (about 1-2 kB each)."""

JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""Compact JSON with one space after separators: a small model left free to add whitespace
may add it forever."""

GrammarKind = Literal["json_object", "json_schema", "lark"]


@dataclass(frozen=True)
class GrammarSpec:
    """What a request's output must match: any JSON object, a JSON Schema (``source``:
    its canonical JSON text), or a Lark grammar (llguidance's dialect, which may embed
    JSON Schemas with ``%json``)."""

    kind: GrammarKind
    source: str = ""

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> GrammarSpec:
        """A spec for ``schema`` (canonical text: equal schemas share one compilation)."""
        return cls("json_schema", json.dumps(schema, sort_keys=True, separators=(",", ":")))

    def grammar(self) -> str:
        """The llguidance grammar text."""
        if self.kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(self.source)
        source = self.source if self.kind == "json_schema" else '{"type": "object"}'
        return llguidance.LLMatcher.grammar_from_json_schema(source, overrides=JSON_OPTIONS)


class RowConstraint:
    """One sequence's grammar state: masks its logits, follows its tokens."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab: int) -> None:
        self._matcher = matcher
        self._vocab = vocab
        self._words = torch.zeros((vocab + 31) // 32, dtype=torch.int32)

    def allowed(self) -> torch.Tensor:
        """Bool ``[vocab]``: the tokens that keep the output in the grammar."""
        if self._matcher.is_error():
            raise RowFailedError(f"structured output failed: {self._matcher.get_error()}")
        words = self._words
        self._matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * 4)
        if self._matcher.is_error():
            raise RowFailedError(f"structured output failed: {self._matcher.get_error()}")
        shifts = torch.arange(32, dtype=torch.int32)
        return ((words[:, None] >> shifts) & 1).flatten()[: self._vocab].bool()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of one row of logits with every token outside the grammar at ``-inf``."""
        allowed = self.allowed()
        width = logits.shape[-1]
        if width != allowed.shape[0]:  # the model's head is wider than the tokenizer
            padded = torch.zeros(width, dtype=torch.bool)
            padded[: min(width, allowed.shape[0])] = allowed[:width]
            allowed = padded
        if not bool(allowed.any()):
            raise RowFailedError("structured output failed: the grammar allows no token")
        return logits.float().masked_fill(~allowed.to(logits.device), float("-inf"))

    def advance(self, token: int) -> None:
        """The sampled token joins the grammar's state (a token the mask allowed)."""
        self._matcher.consume_token(token)


class CompiledGrammar:
    """A compiled grammar: a matcher in its start state, copied for each sequence."""

    def __init__(self, prototype: llguidance.LLMatcher, vocab: int) -> None:
        self._prototype = prototype
        self.vocab = vocab

    def start(self) -> RowConstraint:
        """A fresh state for one sequence (a copy; the prototype never moves)."""
        return RowConstraint(self._prototype.deep_copy(), self.vocab)


class GrammarCompiler:
    """Compiles :class:`GrammarSpec` for one tokenizer; a bounded LRU of the results.

    Built from a Hugging Face fast tokenizer (about 0.3 s for a 49k vocabulary, once).
    Thread-safe: compiles run on whichever thread asks (the API's tokenizer thread).
    """

    def __init__(self, tokenizer: Any, cache_size: int = CACHE_SIZE) -> None:
        self.vocab = len(tokenizer)
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab)
        self._limits = llguidance.LLParserLimits(
            max_grammar_size=MAX_GRAMMAR_SIZE, initial_lexer_fuel=INITIAL_LEXER_FUEL,
            step_lexer_fuel=STEP_LEXER_FUEL, max_lexer_states=MAX_LEXER_STATES,
            verbose_errors=False)
        self._cache: OrderedDict[GrammarSpec, CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        """The compiled grammar of ``spec`` (cached); :class:`UnsupportedSchemaError`
        naming the construct for a schema that is too large or uses what is not
        supported."""
        with self._lock:
            hit = self._cache.get(spec)
            if hit is not None:
                self._cache.move_to_end(spec)
                return hit
        compiled = self._build(spec)
        with self._lock:
            self._cache[spec] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    @property
    def cached(self) -> int:
        """Grammars in the cache."""
        return len(self._cache)

    def _build(self, spec: GrammarSpec) -> CompiledGrammar:
        if len(spec.source) > MAX_SCHEMA_CHARS:
            raise UnsupportedSchemaError(
                f"the {_what(spec)} has {len(spec.source)} characters; at most "
                f"{MAX_SCHEMA_CHARS} are accepted")
        try:
            grammar = spec.grammar()
        except (ValueError, RuntimeError) as exc:
            raise UnsupportedSchemaError(f"{_what(spec)} not supported: {exc}") from None
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0,
                                       limits=self._limits)
        if matcher.is_error():
            raise UnsupportedSchemaError(
                f"{_what(spec)} not supported: {_short(matcher.get_error())}")
        return CompiledGrammar(matcher, self.vocab)


def _what(spec: GrammarSpec) -> str:
    return {"json_object": "JSON object grammar", "json_schema": "JSON schema",
            "lark": "tool-call grammar"}[spec.kind]


def _short(error: str) -> str:
    """llguidance's message without its parser dump (first line, at most 300 chars)."""
    return error.strip().splitlines()[0][:300] if error.strip() else "invalid grammar"
