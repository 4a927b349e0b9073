"""Training data through Hugging Face ``datasets``: local files and ``save_to_disk`` folders.

Used by retraining, where the original training data (copied to the store by
``loraswap train --push``) and the labelled feedback batches (Parquet) are concatenated
without hand-written readers. Only local files are read: nothing comes from the Hub
(``HF_DATASETS_OFFLINE`` is set for the run process, and only packaged builders are used).
The file reader itself, :func:`load_table`, lives in ``adapters/data_tables.py``: the
service checks an uploaded reference dataset with it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.data_tables import load_table
from adapters.errors import ConfigurationError

__all__ = ["concatenate", "from_rows", "load_table", "text_label_table"]


def text_label_table(path: Path, text_column: str, label_column: str, cache_dir: Path) -> Any:
    """Only the text and label columns, both as strings, named ``text`` and ``label``."""
    table = load_table(path, cache_dir)
    missing = {text_column, label_column} - set(table.column_names)
    if missing:
        raise ConfigurationError(f"{path} has no column(s) {sorted(missing)}")
    import datasets

    table = table.select_columns([text_column, label_column])
    renames = {old: new for old, new in ((text_column, "text"), (label_column, "label"))
               if old != new}
    if renames:
        table = table.rename_columns(renames)
    return table.cast(datasets.Features({"text": datasets.Value("string"),
                                         "label": datasets.Value("string")}))


def concatenate(tables: list[Any]) -> Any:
    """Tables of one schema, one after the other."""
    import datasets

    return datasets.concatenate_datasets(tables)


def from_rows(rows: list[dict[str, str]]) -> Any:
    """A table of ``text``/``label`` rows (feedback)."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.Value("string")})
    return datasets.Dataset.from_list(rows, features=features)
