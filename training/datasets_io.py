"""Training data through Hugging Face ``datasets``: local files and ``save_to_disk`` folders.

Used by retraining, where the original training data (copied to the store by
``loraswap train --push``) and the labelled feedback batches (Parquet) are concatenated
without hand-written readers. Only local files are read: nothing comes from the Hub
(``HF_DATASETS_OFFLINE`` is set for the run process, and only packaged builders are used).
The file reader itself, :func:`load_table`, lives in ``jobs/data_tables.py``: the
service checks an uploaded reference dataset with it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswap.core.errors import ConfigurationError
from loraswap.jobs.data_tables import load_table

__all__ = ["concatenate", "from_rows", "load_table", "select_as", "text_label_table"]


def text_label_table(path: Path, text_column: str, label_column: str, cache_dir: Path) -> Any:
    """Only the text and label columns, both as strings, named ``text`` and ``label``."""
    import datasets

    return select_as(load_table(path, cache_dir), {text_column: "text", label_column: "label"},
                     datasets.Features({"text": datasets.Value("string"),
                                        "label": datasets.Value("string")}), path)


def concatenate(tables: list[Any]) -> Any:
    """Tables of one schema, one after the other."""
    import datasets

    return datasets.concatenate_datasets(tables)


def from_rows(rows: list[dict[str, Any]], features: Any = None) -> Any:
    """A table of ``rows`` (feedback) with ``features`` (default: ``text``/``label``
    strings), so it concatenates with a table read from a file."""
    import datasets

    if features is None:
        features = datasets.Features({"text": datasets.Value("string"),
                                      "label": datasets.Value("string")})
    return datasets.Dataset.from_list(rows, features=features)


def select_as(table: Any, columns: dict[str, str], features: Any, path: Path) -> Any:
    """Only ``columns`` (``{column in the file: name in the result}``) of ``table``, renamed
    and cast to ``features``; :class:`ConfigurationError` naming missing columns."""
    missing = set(columns) - set(table.column_names)
    if missing:
        raise ConfigurationError(f"{path} has no column(s) {sorted(missing)} (columns: "
                                 f"{', '.join(table.column_names)})")
    table = table.select_columns(list(columns))
    renames = {old: new for old, new in columns.items() if old != new}
    if renames:
        table = table.rename_columns(renames)
    return table.cast(features)
