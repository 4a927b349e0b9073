"""A reference dataset for an adapter version registered without ``profile.json``.

The operator uploads a file of the traffic the adapter was made for (CSV, TSV, JSON, JSONL
or Parquet, read with ``datasets``); a profiling job computes the version's drift
reference from it. The service checks the file with :func:`read_reference` before the job
starts, so a bad file is a 400 naming the problem rather than a failed job, and the job
reads it with the same function, so both see the same rows.

Columns, per task (names are request parameters; defaults ``text`` and ``label``):

* seq-cls: ``text`` a string; ``label`` (optional) one of the adapter's labels;
* token-cls: ``text`` a list of words, or a string split into words as the service splits
  a ``text_split: words`` input; ``label`` (optional) a list of tags, one per word;
* causal-lm: ``text`` the prompt (one user turn); ``label`` (optional) the expected answer.

Without a label column, a classifier's label distribution is its own predictions on the
reference inputs, and a causal-lm adapter has no confidence reference. A file with more
than ``max_rows`` rows is sampled down (seeded): forward passes over a few thousand inputs
profile a distribution as well as a million would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswap.adapters.package import TaskKind
from loraswap.adapters.words import WORD_PIECE
from loraswap.core.errors import InvalidRequestError
from loraswap.jobs.data_tables import TABLE_BUILDERS, TABLE_KINDS, load_table

DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"
DEFAULT_MAX_ROWS = 2000
# What ``datasets`` says when a file parses to no rows at all (e.g. a CSV header alone).
_NO_ROWS = "corresponds to no data"
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,100}$")


@dataclass(frozen=True)
class ReferenceColumns:
    """Which columns hold the inputs and the (optional) labels, and how many rows to use.

    ``label`` None: the column ``label`` when the file has one, else no labels; a name
    given explicitly must exist.
    """

    text: str = DEFAULT_TEXT_COLUMN
    label: str | None = None
    max_rows: int = DEFAULT_MAX_ROWS


@dataclass(frozen=True)
class ReferenceRows:
    """The usable rows of a reference file: inputs and, when the file has them, labels.

    ``texts`` are strings (lists of words for token-cls); ``labels`` strings (lists of
    tags for token-cls; the expected answer for causal-lm) or None without a label column.
    """

    texts: list[Any]
    labels: list[Any] | None
    text_column: str
    label_column: str | None
    rows_in_file: int
    dropped: int


def check_file_name(filename: str) -> str:
    """``filename`` if it is a safe name of a supported table file; else a 400 naming it."""
    if not _FILE_NAME.fullmatch(filename):
        raise InvalidRequestError(f"invalid reference file name {filename!r}: use letters, "
                                  "digits, '.', '_' and '-'")
    suffix = Path(filename).suffix.lower()
    if suffix not in TABLE_BUILDERS:
        raise InvalidRequestError(
            f"reference file {filename!r}: file type {suffix or '(no extension)'!r} is not "
            f"supported; upload {TABLE_KINDS} ({', '.join(sorted(TABLE_BUILDERS))})")
    return filename


def read_reference(path: Path, task: TaskKind, labels: list[str] | None,
                   columns: ReferenceColumns, cache_dir: Path, *, name: str | None = None,
                   seed: int = 42) -> ReferenceRows:
    """The usable rows of the reference file at ``path`` (shown as ``name`` in errors);
    400 for an unreadable or empty file, a missing column, or labels the adapter lacks."""
    shown = name or path.name
    check_file_name(shown)
    if path.stat().st_size == 0:
        raise InvalidRequestError(f"{shown} holds no rows (the file is empty)")
    try:
        table = load_table(path, cache_dir)
    except Exception as exc:  # datasets/pyarrow raise many kinds for a malformed file
        if _NO_ROWS in str(exc):  # a header without rows: datasets has no split to give
            raise InvalidRequestError(f"{shown} holds no rows") from exc
        kind = TABLE_BUILDERS[Path(shown).suffix.lower()].upper()
        raise InvalidRequestError(f"cannot read {shown} as {kind}: "
                                  f"{_first_line(exc)}") from exc
    total = len(table)
    if total == 0:
        raise InvalidRequestError(f"{shown} holds no rows")
    label_column = _label_column(table.column_names, columns, shown)
    if total > columns.max_rows:
        table = table.shuffle(seed=seed).select(range(columns.max_rows))
    wanted = [columns.text] + ([label_column] if label_column else [])
    data = table.select_columns(wanted).to_dict()
    raw_labels = data[label_column] if label_column else [None] * len(data[columns.text])
    texts: list[Any] = []
    parsed: list[Any] = []
    for text, label in zip(data[columns.text], raw_labels, strict=True):
        row = _PARSERS[task](text, label, shown)
        if row is not None:
            texts.append(row[0])
            parsed.append(row[1])
    if not texts:
        raise InvalidRequestError(f"{shown} holds no row with a non-empty {columns.text!r}"
                                  + (f" and {label_column!r}" if label_column else ""))
    if label_column and task.has_labels:
        _check_labels(parsed, labels or [], label_column, shown)
    return ReferenceRows(texts, parsed if label_column else None, columns.text, label_column,
                         total, len(data[columns.text]) - len(texts))


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (pyarrow's run over many lines)."""
    text = str(exc).strip() or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        text = str(cause).strip()  # datasets wraps the parser's error: that one says why
    return text.splitlines()[0][:300]


def _label_column(names: list[str], columns: ReferenceColumns, shown: str) -> str | None:
    listed = ", ".join(repr(n) for n in names)
    if columns.text not in names:
        raise InvalidRequestError(f"{shown} has no column {columns.text!r} (columns: "
                                  f"{listed}); name the input column with text_column")
    if columns.label is None:
        return DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in names else None
    if columns.label not in names:
        raise InvalidRequestError(f"{shown} has no column {columns.label!r} (columns: "
                                  f"{listed}); name the label column with label_column, or "
                                  "leave it out to profile the adapter's own predictions")
    return columns.label


def _text_row(text: Any, label: Any, shown: str) -> tuple[str, str | None] | None:
    """seq-cls and causal-lm: a non-empty string input; its label or answer, if any."""
    value = "" if text is None else str(text).strip()
    answer = None if label is None else str(label).strip()
    if not value or answer == "":
        return None
    return value, answer


def _word_row(text: Any, tags: Any, shown: str) -> tuple[list[str], list[str] | None] | None:
    """token-cls: the words (a list, or a string split as the service splits it); tags."""
    words = ([str(w) for w in text] if isinstance(text, list) else
             WORD_PIECE.findall("" if text is None else str(text)))
    if not words:
        return None
    if tags is None:
        return words, None
    if not isinstance(tags, list) or len(tags) != len(words):
        raise InvalidRequestError(
            f"{shown}: a row has {len(words)} words but its tags are "
            f"{'a list of ' + str(len(tags)) if isinstance(tags, list) else repr(tags)[:40]}"
            "; token-cls labels are lists of tags, one per word")
    return words, [str(t) for t in tags]


_PARSERS = {TaskKind.SEQ_CLS: _text_row, TaskKind.CAUSAL_LM: _text_row,
            TaskKind.TOKEN_CLS: _word_row}


def _check_labels(values: list[Any], known: list[str], column: str, shown: str) -> None:
    seen: set[str] = set()
    for value in values:
        seen.update(value if isinstance(value, list) else [value])
    unknown = sorted(seen - set(known))
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InvalidRequestError(
            f"{shown}: column {column!r} holds {unknown[:5]}{more}, which are not labels of "
            f"the adapter ({', '.join(known)})")
