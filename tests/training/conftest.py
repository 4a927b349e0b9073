"""Fixtures for the training tests: tiny datasets for each task kind, written to disk."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loraswap.training.config import TrainConfig, build_config

POSITIVE = ["the quick brown fox", "the lazy dog jumps", "brown fox over the dog"]
NEGATIVE = ["paris is the capital", "capital of france", "name three primary colors"]


@pytest.fixture
def csv_data(tmp_path: Path) -> Path:
    """A separable two-class ``text,label`` CSV (40 rows)."""
    path = tmp_path / "data.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(20):
            writer.writerow([f"{POSITIVE[i % 3]} {i}", "pos"])
            writer.writerow([f"{NEGATIVE[i % 3]} {i}", "neg"])
    return path


@pytest.fixture
def conll_data(tmp_path: Path) -> Path:
    """A CoNLL file: 'zzqxv disease' is the entity, with a made-up multi-token word."""
    path = tmp_path / "ner.tsv"
    sentence = "the\tO\nzzqxv\tB-Disease\ndisease\tI-Disease\nof\tO\nthe\tO\ndog\tO\n\n"
    path.write_text(sentence * 24, encoding="utf-8")
    return path


@pytest.fixture
def sft_data(tmp_path: Path) -> Path:
    """Alpaca-style instruction records as JSONL."""
    path = tmp_path / "sft.jsonl"
    rows = [{"instruction": "name three primary colors", "input": "",
             "output": "red, yellow and blue"},
            {"instruction": "what is the capital of france?", "input": "answer briefly",
             "output": "paris is the capital of france."}] * 12
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ConfigFactory = Callable[..., TrainConfig]


@pytest.fixture
def make_config(tiny_base_dir: Path, tmp_path: Path) -> ConfigFactory:
    """``make_config(task, data, **overrides)``: a fast config on the tiny base model."""

    def factory(task: str, data: Path, **overrides: Any) -> TrainConfig:
        values: dict[str, Any] = {
            "task": task, "data": data, "output": tmp_path / f"out-{task}",
            "base_model": tiny_base_dir, "max_steps": 4, "batch_size": 8, "progress": False,
            "learning_rate": 5e-3,
        }
        values.update(overrides)
        return build_config({}, values)

    return factory
