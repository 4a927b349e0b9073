"""What a retraining run learns from and is judged on, per task kind.

One :class:`TaskData` per task turns the two sources into rows of one table:

* the original data (the files ``loraswap train --push`` copied to the store), read
  through ``datasets`` (CSV/TSV/JSON/JSONL/Parquet; CoNLL, which ``datasets`` has no
  packaged builder for, through :func:`loraswap.training.data.read_conll`);
* the labelled feedback rows (``service/drift/feedback.py`` writes them beside the
  capture: the input as the service received it, and ``label`` / ``text`` / ``labels``).

| task | table | feedback used | gate metric |
|---|---|---|---|
| seq-cls | ``text``, ``label`` | ``label`` (one of the adapter's labels) | accuracy, higher |
| token-cls | ``tokens``, ``tags`` | ``labels``: one tag per word of the input | entity F1, higher |
| causal-lm | ``messages`` | ``text``: the answer the prompt should get | eval loss, lower |

The tables are written as JSONL with the column names :func:`loraswap.training.data.load_examples`
reads by default, so the candidate trains, and both versions are evaluated, through the
ordinary training code.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from loraswap.adapters.package import TaskKind
from loraswap.adapters.words import split_words
from loraswap.training.data import chat_from_row, detect_format, read_conll, split_examples
from loraswap.training.datasets_io import from_rows, load_table, select_as, text_label_table

CHAT_ROLES = ("system", "user", "assistant")
# The fewest validation rows that rank a candidate's checkpoints: with fewer, a score
# moves in steps of 1/n (two rows: 0, 0.5, 1), ties keep the earliest evaluation, and the
# candidate would keep its first steps' weights; it keeps its final weights instead.
MIN_SELECTION_VALIDATION = 16


@dataclass(frozen=True)
class DataReading:
    """How the original data files are read: the active version's training settings."""

    data_format: str = "auto"
    text_column: str | None = None
    label_column: str | None = None

    @classmethod
    def of(cls, config: dict[str, Any]) -> DataReading:
        """From a manifest's ``training.config``."""
        return cls(str(config.get("data_format") or "auto"), config.get("text_column"),
                   config.get("label_column"))


@dataclass
class FeedbackSplit:
    """Usable feedback rows, as table rows, split into training and held-out shares."""

    train: list[dict[str, Any]] = field(default_factory=list)
    heldout: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0  # rows with this task's ground truth that cannot be used (counted)
    duplicates: int = 0  # rows whose input (normalised) another, later row already gave
    in_test: int = 0  # rows whose input is in the original test split (used on neither side)


class TaskData(ABC):
    """The table of one task: its columns, the original data, the feedback rows."""

    task: ClassVar[TaskKind]

    @abstractmethod
    def features(self) -> Any:
        """The ``datasets.Features`` of the table."""

    @abstractmethod
    def original(self, path: Path, reading: DataReading, cache_dir: Path) -> Any:
        """The original data file as a table."""

    @abstractmethod
    def carries(self, row: dict[str, Any]) -> bool:
        """Whether a feedback row holds this task's kind of ground truth."""

    @abstractmethod
    def from_feedback(self, row: dict[str, Any], labels: list[str]) -> dict[str, Any] | None:
        """A table row from a feedback row (None: unusable, e.g. a label the head lacks)."""

    def split_feedback(self, rows: list[dict[str, Any]], labels: list[str], holdout: float,
                       seed: int, test_inputs: frozenset[str] = frozenset()) -> FeedbackSplit:
        """The latest usable feedback per input text, split by a hash of that text.

        Keyed by the normalised input (:meth:`input_key`), not by the prediction id: a
        tenant sending one text under many ids gets one row, on one side, in every run (an
        input held out once is never trained on by a later candidate, and one trained on
        never judges a version). Inputs of the original test split (``test_inputs``) are
        used on neither side: trained on, they would leak into what judges the candidate.
        """
        latest: dict[tuple[str, int], dict[str, Any]] = {}
        for row in rows:  # oldest batch first: a later answer replaces an earlier one
            if self.carries(row) and row.get("task", self.task.value) == self.task.value:
                latest[(str(row["prediction_id"]), int(row.get("index") or 0))] = row
        split = FeedbackSplit()
        by_input: dict[str, dict[str, Any]] = {}
        for row in latest.values():
            converted = self.from_feedback(row, labels)
            if converted is None:
                split.dropped += 1
                continue
            key = self.input_key(converted)
            if key in test_inputs:
                split.in_test += 1
                continue
            split.duplicates += key in by_input
            by_input.pop(key, None)  # the latest answer for an input wins
            by_input[key] = converted
        for key, converted in by_input.items():
            (split.heldout if held_out(key, holdout, seed) else split.train).append(converted)
        return split

    def input_key(self, row: dict[str, Any]) -> str:
        """The normalised input of a table row (what feedback is de-duplicated and split
        by): NFKC, case-folded, whitespace collapsed."""
        return normalise(self.input_text(row))

    @abstractmethod
    def input_text(self, row: dict[str, Any]) -> str:
        """The input of a table row as one text."""

    def table(self, rows: list[dict[str, Any]]) -> Any:
        """Feedback rows as a table of this task."""
        return from_rows(rows, self.features())


def normalise(text: str) -> str:
    """``text`` as compared for duplicates: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def held_out(key: str, share: float, seed: int) -> bool:
    """Whether the input ``key`` belongs to the held-out ``share`` (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < share


class SeqClsData(TaskData):
    """Texts and their class."""

    task = TaskKind.SEQ_CLS

    def features(self) -> Any:
        import datasets

        return datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.Value("string")})

    def original(self, path: Path, reading: DataReading, cache_dir: Path) -> Any:
        return text_label_table(path, reading.text_column or "text",
                                reading.label_column or "label", cache_dir)

    def carries(self, row: dict[str, Any]) -> bool:
        return row.get("label") is not None

    def input_text(self, row: dict[str, Any]) -> str:
        return str(row["text"])

    def from_feedback(self, row: dict[str, Any], labels: list[str]) -> dict[str, Any] | None:
        label = str(row["label"])
        return {"text": str(row["input"]), "label": label} if label in labels else None


class TokenClsData(TaskData):
    """Sentences as words with one tag each.

    Feedback ``labels`` tag the words of the input as :func:`loraswap.adapters.words.split_words`
    splits it, the split training and serving (``text_split: words``) share.
    """

    task = TaskKind.TOKEN_CLS

    def features(self) -> Any:
        import datasets

        words = datasets.Sequence(datasets.Value("string"))
        return datasets.Features({"tokens": words, "tags": words})

    def original(self, path: Path, reading: DataReading, cache_dir: Path) -> Any:
        if detect_format(path, reading.data_format, self.task) == "conll":
            return self.table([{"tokens": s.tokens, "tags": s.tags} for s in read_conll(path)])
        table = load_table(path, cache_dir)
        tokens, tags = reading.text_column or "tokens", reading.label_column or "tags"
        if not {tokens, tags} <= set(table.column_names) and \
                {"tokens", "tags"} <= set(table.column_names):
            # Packages pushed before the columns were recorded per task say text/label.
            tokens, tags = "tokens", "tags"
        table = select_as(table, {tokens: "tokens", tags: "tags"}, self.features(), path)
        return table.filter(lambda row: bool(row["tokens"]))

    def carries(self, row: dict[str, Any]) -> bool:
        return row.get("labels") is not None

    def input_text(self, row: dict[str, Any]) -> str:
        return " ".join(str(w) for w in row["tokens"])

    def from_feedback(self, row: dict[str, Any], labels: list[str]) -> dict[str, Any] | None:
        words, tags = split_words(str(row["input"])), [str(t) for t in row["labels"]]
        if not words or len(words) != len(tags) or any(t not in labels for t in tags):
            return None
        return {"tokens": words, "tags": tags}


class CausalLmData(TaskData):
    """Conversations; the loss covers the assistant turns.

    A feedback row becomes the captured prompt followed by the feedback ``text`` as the
    assistant's answer. A text prompt is one user turn (as the service renders it unless
    the request asked for ``raw``); a chat, captured as one JSON list of
    ``{role, content}``, keeps its turns.
    """

    task = TaskKind.CAUSAL_LM

    def features(self) -> Any:
        import datasets

        return datasets.Features({"messages": [{"role": datasets.Value("string"),
                                                "content": datasets.Value("string")}]})

    def original(self, path: Path, reading: DataReading, cache_dir: Path) -> Any:
        table = load_table(path, cache_dir)

        def to_messages(row: dict[str, Any], index: int) -> dict[str, Any]:
            return {"messages": chat_from_row(row, path, index).messages}

        return table.map(to_messages, with_indices=True, remove_columns=table.column_names,
                         features=self.features())

    def carries(self, row: dict[str, Any]) -> bool:
        return row.get("text") is not None

    def input_text(self, row: dict[str, Any]) -> str:
        """The prompt: every message but a final assistant answer."""
        messages = list(row["messages"])
        if messages and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages)

    def from_feedback(self, row: dict[str, Any], labels: list[str]) -> dict[str, Any] | None:
        answer = str(row["text"]).strip()
        if not answer:
            return None
        return {"messages": [*prompt_messages(str(row["input"])),
                             {"role": "assistant", "content": answer}]}


def prompt_messages(captured: str) -> list[dict[str, str]]:
    """The conversation a captured generation input stands for.

    The service captures a chat as one JSON list of ``{role, content}`` objects and a text
    prompt as itself; a text that happens to be such a JSON list is read as a chat.
    """
    try:
        parsed = json.loads(captured)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        parsed = parsed.get("messages")
    if isinstance(parsed, list) and parsed and all(
            isinstance(m, dict) and m.get("role") in CHAT_ROLES
            and isinstance(m.get("content"), str) for m in parsed):
        return [{"role": m["role"], "content": m["content"]} for m in parsed]
    return [{"role": "user", "content": captured}]


def normalised_input(row: dict[str, Any], task: TaskKind) -> str:
    """The input of a table row, case- and whitespace-folded: two feedback rows with the
    same normalised input are one example (the same question asked twice)."""
    if task is TaskKind.SEQ_CLS:
        text = str(row["text"])
    elif task is TaskKind.TOKEN_CLS:
        text = " ".join(str(t) for t in row["tokens"])
    else:
        text = json.dumps([[m["role"], m["content"]] for m in row["messages"][:-1]])
    return " ".join(text.split()).casefold()


def deduplicate(rows: list[dict[str, Any]], task: TaskKind) -> list[dict[str, Any]]:
    """One row per normalised input, the last one given (the latest feedback wins), in
    the order of their last appearance; repeated inputs would otherwise weigh more in
    the candidate's training and count several times in its evaluation."""
    last: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = normalised_input(row, task)
        last.pop(key, None)
        last[key] = row
    return list(last.values())


@dataclass
class CandidateTables:
    """The candidate's training rows (feedback repeated) and its validation rows: distinct
    inputs, none of which is also a training input (normalised)."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]


def carve_validation(task_data: TaskData, replay: list[dict[str, Any]],
                     fresh: list[dict[str, Any]], repeat: int,
                     share: Callable[[int], float], seed: int) -> CandidateTables:
    """Hold out ``share(n)`` of the ``n`` distinct inputs of ``replay`` + ``fresh``
    **before** the feedback is repeated ``repeat`` times, so no validation input (the candidate's
    checkpoint choice and its drift reference) is also a training input: a split of the
    repeated table would hold copies of rows the candidate trains on. Each held-out input
    is one validation row (the last given); every row of a held-out input leaves training.
    Fewer than 2 distinct inputs: nothing is held out."""
    rows = [*replay, *fresh]
    last: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = task_data.input_key(row)
        last.pop(key, None)
        last[key] = row
    if len(last) < 2:
        return CandidateTables(replay + fresh * repeat, [])
    _, held = split_examples(list(last), share(len(last)), seed)
    gone = set(held)
    kept_replay = [row for row in replay if task_data.input_key(row) not in gone]
    kept_fresh = [row for row in fresh if task_data.input_key(row) not in gone]
    return CandidateTables(kept_replay + kept_fresh * repeat, [last[key] for key in held])


TASK_DATA: dict[TaskKind, TaskData] = {
    data.task: data for data in (SeqClsData(), TokenClsData(), CausalLmData())}
