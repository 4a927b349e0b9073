"""Reading training data: JSONL/JSON/CSV/TSV tables and CoNLL files, into task examples.

Formats are detected from the file extension (``.jsonl``, ``.json``, ``.csv``, ``.tsv``,
``.conll``/``.txt`` for CoNLL) unless given. A ``.tsv`` file whose first line has no header
named after the columns but two tab-separated fields per line is still a table; CoNLL must be
asked for (``--format conll``) or detected for token classification.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from loraswap.adapters.package import TaskKind
from loraswap.core.errors import ConfigurationError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class TextExample:
    """One text with its class (sequence classification)."""

    text: str
    label: str


@dataclass(frozen=True)
class TokenExample:
    """One sentence as words with one BIO tag each (token classification)."""

    tokens: list[str]
    tags: list[str]


@dataclass(frozen=True)
class ChatExample:
    """A conversation; the loss covers the assistant turns (causal-lm SFT)."""

    messages: list[dict[str, str]]


Example = TextExample | TokenExample | ChatExample

_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
               ".tsv": "tsv", ".conll": "conll", ".iob": "conll", ".bio": "conll"}


def detect_format(path: Path, requested: str, task: TaskKind) -> str:
    """The data format: ``requested`` unless ``auto``, else from the extension."""
    if requested != "auto":
        return requested
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if task is TaskKind.TOKEN_CLS and fmt in (None, "tsv"):
        return "conll"  # token<TAB>tag files often end in .tsv (NCBI-disease does)
    if fmt is None:
        raise ConfigurationError(
            f"cannot tell the format of {path} from its extension {path.suffix!r}; "
            "pass --format jsonl|json|csv|tsv|conll"
        )
    return fmt


def read_table(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Rows of a JSONL, JSON (a list of objects), CSV or TSV file."""
    try:
        if fmt == "jsonl":
            with path.open(encoding="utf-8") as handle:
                rows = [json.loads(line) for line in handle if line.strip()]
        elif fmt == "json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        elif fmt in ("csv", "tsv"):
            csv.field_size_limit(sys.maxsize)
            with path.open(encoding="utf-8", newline="") as handle:
                # GLUE-style TSV has bare quote characters inside sentences: no quoting there.
                reader = (csv.DictReader(handle) if fmt == "csv" else
                          csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
                rows = list(reader)
        else:
            raise ConfigurationError(f"{fmt!r} is not a table format")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise ConfigurationError(f"cannot read {path} as {fmt}: {exc}") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigurationError(f"{path}: expected a list of records (objects)")
    return rows


def read_conll(path: Path) -> list[TokenExample]:
    """Sentences of a CoNLL file: ``token<TAB>tag`` (tag last) per line, blank lines between."""
    sentences: list[TokenExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path} as CoNLL: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append(TokenExample(tokens, tags))
                tokens, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise ConfigurationError(f"{path}:{number}: expected 'token<TAB>tag', got {line!r}")
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append(TokenExample(tokens, tags))
    return sentences


def _column(row: dict[str, Any], column: str, path: Path, index: int) -> Any:
    if column not in row:
        raise ConfigurationError(
            f"{path}: record {index} has no column {column!r} (columns: {', '.join(row)}); "
            "choose one with --text-column / --label-column"
        )
    return row[column]


def chat_from_row(row: dict[str, Any], path: Path, index: int) -> ChatExample:
    """A chat (``messages``) or instruction (``instruction``/``input``/``output``) record as
    a conversation; ``path`` and ``index`` name the record in errors."""
    if "messages" in row:
        messages = row["messages"]
        if not (isinstance(messages, list) and messages
                and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in messages)
                and messages[-1]["role"] == "assistant"):
            raise ConfigurationError(
                f"{path}: record {index}: messages must be a list of {{role, content}} "
                "ending with an assistant turn"
            )
        return ChatExample([{"role": str(m["role"]), "content": str(m["content"])}
                            for m in messages])
    if "instruction" in row and "output" in row:
        prompt = str(row["instruction"]).strip()
        extra = str(row.get("input") or "").strip()
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        return ChatExample([{"role": "user", "content": prompt},
                            {"role": "assistant", "content": str(row["output"]).strip()}])
    raise ConfigurationError(
        f"{path}: record {index} is neither chat ('messages') nor instruction data "
        "('instruction', 'input', 'output')"
    )


def load_examples(path: Path, task: TaskKind, fmt: str = "auto",
                  text_column: str | None = None,
                  label_column: str | None = None) -> list[Example]:
    """Read ``path`` into the examples of ``task``; rows with empty text are dropped."""
    if not path.is_file():
        raise ConfigurationError(f"data file {path} does not exist")
    fmt = detect_format(path, fmt, task)
    if fmt == "conll":
        if task is not TaskKind.TOKEN_CLS:
            raise ConfigurationError(f"{path}: CoNLL data is for token-cls, not {task}")
        return list(read_conll(path))
    rows = read_table(path, fmt)
    examples: list[Example] = []
    dropped = 0
    for index, row in enumerate(rows):
        if task is TaskKind.CAUSAL_LM:
            examples.append(chat_from_row(row, path, index))
        elif task is TaskKind.TOKEN_CLS:
            tokens = _column(row, text_column or "tokens", path, index)
            tags = _column(row, label_column or "tags", path, index)
            if not (isinstance(tokens, list) and isinstance(tags, list)
                    and len(tokens) == len(tags)):
                raise ConfigurationError(
                    f"{path}: record {index}: tokens and tags must be lists of equal length")
            if tokens:
                examples.append(TokenExample([str(t) for t in tokens], [str(t) for t in tags]))
        else:
            text = _column(row, text_column or "text", path, index)
            label = _column(row, label_column or "label", path, index)
            text = "" if text is None else str(text).strip()
            if not text or label is None or str(label).strip() == "":
                dropped += 1
                continue
            examples.append(TextExample(text, str(label).strip()))
    if dropped:
        logger.warning("%s: dropped %d record(s) with empty text or label", path, dropped)
    if not examples:
        raise ConfigurationError(f"{path} holds no usable examples")
    return examples


def split_examples(items: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Seeded shuffle, then (train, validation) with ``fraction`` (at least 1) held out."""
    if len(items) < 2:
        raise ConfigurationError("need at least 2 examples to hold out a validation split")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(len(items) - 1, max(1, round(len(items) * fraction)))
    val = [items[i] for i in sorted(order[:n_val])]
    train = [items[i] for i in sorted(order[n_val:])]
    return train, val


def subsample(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """At most ``limit`` items, drawn with ``seed`` (order kept); all when no limit."""
    if limit is None or len(items) <= limit:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def label_names(task: TaskKind, examples: Sequence[Example],
                fixed: list[str] | None) -> list[str] | None:
    """Head order of the labels: ``fixed`` if given, else sorted (``O`` first for tags)."""
    if task is TaskKind.CAUSAL_LM:
        return None
    seen: set[str] = set()
    for example in examples:
        if isinstance(example, TextExample):
            seen.add(example.label)
        elif isinstance(example, TokenExample):
            seen.update(example.tags)
    if fixed:
        missing = sorted(seen - set(fixed))
        if missing:
            raise ConfigurationError(f"data has labels {missing} missing from --labels")
        return list(fixed)
    if task is TaskKind.TOKEN_CLS:
        # Each B-X gets its I-X even if absent, since the encoder writes I- on sub-tokens.
        for tag in list(seen):
            if tag.startswith("B-"):
                seen.add("I-" + tag[2:])
        return sorted(seen, key=lambda t: (t != "O", t[2:], t))
    return sorted(seen)
