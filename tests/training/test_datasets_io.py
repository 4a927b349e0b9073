"""Training data through ``datasets``: TSV with bare quotes, JSONL, Parquet, saved folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraswap.core.errors import ConfigurationError
from loraswap.training.datasets_io import concatenate, from_rows, load_table, text_label_table


def test_a_tsv_with_bare_quotes_reads_every_row(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\nit \'s " great\t1\n" bad " movie\t0\nfine\t1\n')
    table = text_label_table(path, "sentence", "label", tmp_path / "cache")
    assert table["text"] == ['it \'s " great', '" bad " movie', "fine"]
    assert table["label"] == ["1", "0", "1"]


def test_original_data_and_feedback_concatenate(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    original = text_label_table(path, "text", "label", tmp_path / "cache")
    both = concatenate([original, from_rows([{"text": "c", "label": "1"}])])
    assert list(zip(both["text"], both["label"], strict=True)) == [
        ("a", "1"), ("b", "0"), ("c", "1")]


def test_parquet_and_save_to_disk_folders_load(tmp_path: Path) -> None:
    rows = from_rows([{"text": "x", "label": "0"}, {"text": "y", "label": "1"}])
    rows.to_parquet(str(tmp_path / "data.parquet"))
    rows.save_to_disk(str(tmp_path / "saved"))
    assert load_table(tmp_path / "data.parquet", tmp_path / "cache")["text"] == ["x", "y"]
    assert load_table(tmp_path / "saved", tmp_path / "cache")["label"] == ["0", "1"]


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\nfine,1\n")
    with pytest.raises(ConfigurationError, match="text"):
        text_label_table(path, "text", "label", tmp_path / "cache")
