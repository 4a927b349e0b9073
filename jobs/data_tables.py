"""Data files through Hugging Face ``datasets``: local files and ``save_to_disk`` folders.

Shared by training (retraining reads the original training data and the feedback batches)
and the service (an uploaded reference dataset is checked before its profiling job
starts), so both read a file the same way. Only local files are read: nothing comes from
the Hub (only packaged builders are used; the job processes set ``HF_DATASETS_OFFLINE``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from loraswap.core.errors import ConfigurationError

TABLE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json",
                  ".ndjson": "json", ".parquet": "parquet"}
"""File name suffix -> the ``datasets`` packaged builder that reads it."""
TABLE_KINDS = "CSV, TSV, JSON, JSONL or Parquet"


def load_table(path: Path, cache_dir: Path) -> Any:
    """A ``datasets.Dataset`` of a CSV/TSV/JSON/JSONL/Parquet file or a saved folder."""
    import datasets

    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            return loaded["train"] if "train" in loaded else next(iter(loaded.values()))
        return loaded
    builder = TABLE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ConfigurationError(f"cannot read {path} with datasets: use {TABLE_KINDS} "
                                 "or a save_to_disk folder")
    options: dict[str, Any] = {}
    if path.suffix.lower() == ".tsv":
        # Corpora like SST-2 hold bare quotes inside fields: no CSV quoting for TSV.
        options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    return datasets.load_dataset(builder, data_files=str(path), split="train",
                                 cache_dir=str(cache_dir), **options)
