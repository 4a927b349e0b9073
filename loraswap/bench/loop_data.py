"""Data and statistics of ``loraswap bench loop``: the real datasets of a pair, read into
one label vocabulary, and accuracies with their sampling noise.

Pure functions (no server), so the arithmetic and the readers are tested on their own.
"""

from __future__ import annotations

import csv
import json
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NEGATIVE, POSITIVE = "negative", "positive"
SST2_LABELS = {"0": NEGATIVE, "1": POSITIVE}
SST2_TRAIN_ROWS = 60_000  # the rows a source adapter trains on; the rest stays unseen


@dataclass(frozen=True)
class Example:
    """One labelled text."""

    text: str
    label: str


@dataclass(frozen=True)
class DatasetSpec:
    """A binary sentiment dataset of ``../shared/data``: where its splits lie."""

    name: str
    description: str
    train: str
    test: str


DATASETS = {
    "sst2": DatasetSpec("sst2", "SST-2 movie-review phrases (GLUE)",
                        "sst2/train.tsv", "sst2/dev.tsv"),
    "tweets": DatasetSpec("tweets", "Kaggle tweet sentiment, negative and positive "
                          "tweets (neutral left out)",
                          "tweet_sentiment_extraction/train.csv",
                          "tweet_sentiment_extraction/test.csv"),
}


def read_split(data_root: Path, dataset: str, split: str) -> list[Example]:
    """Every non-empty example of ``dataset``'s ``split`` (``train`` or ``test``), labels
    named ``negative`` / ``positive`` whatever the file calls them. SST-2 ``train``: only
    its first 60,000 rows (a source adapter samples from them; the rest is never seen)."""
    spec = DATASETS[dataset]
    path = data_root / (spec.train if split == "train" else spec.test)
    with path.open(encoding="utf-8", newline="") as handle:
        if dataset == "sst2":
            reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            rows = [Example(clean(r["sentence"]), SST2_LABELS[r["label"]]) for r in reader]
            if split == "train":
                rows = rows[:SST2_TRAIN_ROWS]
        else:
            rows = [Example(clean(r["text"]), r["sentiment"]) for r in csv.DictReader(handle)
                    if r["sentiment"] in (NEGATIVE, POSITIVE)]
    return [row for row in rows if row.text]


def clean(text: str | None) -> str:
    """One line of text: whitespace runs (tabs, newlines) folded to one space."""
    return " ".join((text or "").split())


def sample(rows: Sequence[Example], count: int, seed: int) -> list[Example]:
    """``count`` rows drawn without replacement with ``seed`` (all of them, shuffled,
    when there are fewer); refuses a sample larger than the data."""
    if count > len(rows):
        raise ValueError(f"asked for {count} rows, the split has {len(rows)}")
    return random.Random(seed).sample(list(rows), count)


def distinct(rows: Sequence[Example], avoid: Sequence[Example]) -> list[Example]:
    """``rows`` whose text is not in ``avoid`` and not repeated (first one kept)."""
    seen = {row.text.casefold() for row in avoid}
    out = []
    for row in rows:
        key = row.text.casefold()
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def write_jsonl(rows: Sequence[Example], path: Path) -> Path:
    """``{"text", "label"}`` per line: the table ``loraswap train --format jsonl`` reads."""
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({"text": row.text, "label": row.label}) + "\n")
    return path


@dataclass(frozen=True)
class Accuracy:
    """Share of correct answers on ``examples`` inputs, with a 95 % Wilson interval."""

    examples: int
    correct: int
    value: float
    low: float
    high: float

    @classmethod
    def of(cls, hits: Sequence[bool]) -> Accuracy:
        """The accuracy of a list of per-example outcomes."""
        low, high = wilson(sum(hits), len(hits))
        value = sum(hits) / len(hits) if hits else math.nan
        return cls(len(hits), sum(hits), value, low, high)


def wilson(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (``nan`` bounds for no examples)."""
    if total == 0:
        return math.nan, math.nan
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Difference:
    """Accuracy of B minus accuracy of A on the same examples, with a 95 % paired
    bootstrap interval (examples resampled, both versions' outcomes kept together)."""

    value: float
    low: float
    high: float


def paired_difference(a: Sequence[bool], b: Sequence[bool], *, resamples: int = 2000,
                      seed: int = 0) -> Difference:
    """``mean(b) - mean(a)`` and its percentile bootstrap interval."""
    if len(a) != len(b) or not a:
        raise ValueError("paired outcomes need the same, non-zero number of examples")
    delta = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(delta), (resamples, len(delta)))
    means = delta[draws].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return Difference(float(delta.mean()), float(low), float(high))


def label_shares(rows: Sequence[Example]) -> dict[str, float]:
    """Share of each label (for the report: what the majority class alone would score)."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.label] = counts.get(row.label, 0) + 1
    return {label: round(count / len(rows), 4) for label, count in sorted(counts.items())}


def median_words(rows: Sequence[Example]) -> float:
    """Median number of whitespace-separated words (how different the two datasets look)."""
    return float(statistics.median(len(row.text.split()) for row in rows))
