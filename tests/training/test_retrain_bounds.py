"""A package manifest cannot point a retraining run at other tenants' objects or at an
unbounded run (issue 23, finding 6)."""

from __future__ import annotations

import pytest

from loraswap.core.errors import ConfigurationError
from loraswap.training.retrain_bounds import check_config, check_data_store

OWN = "training-data/acme/sentiment/0123456789abcdef-train.csv"


def test_only_the_adapters_own_training_data_keys_are_read() -> None:
    assert check_data_store("acme", "sentiment", {"train": OWN}) == {"train": OWN}
    forged = ["training-data/bravo/sentiment/0123456789abcdef-train.csv",  # other tenant
              "training-data/acme/other/0123456789abcdef-train.csv",  # other adapter
              "feedback/bravo/intent/batch-1.parquet", "captures/bravo/intent/x.parquet",
              "adapters/bravo/intent/versions/00000001/adapter.safetensors",
              "training-data/acme/sentiment/../../bravo/x/train.csv",
              "training-data/acme/sentiment/sub/dir.csv", "tenants/bravo.json"]
    for key in forged:
        # Old code: the run downloaded whatever key the manifest named.
        with pytest.raises(ConfigurationError, match="its own adapter's training data"):
            check_data_store("acme", "sentiment", {"train": OWN, "test": key})
    with pytest.raises(ConfigurationError, match="unknown role"):
        check_data_store("acme", "sentiment", {"secrets": OWN})


def test_the_training_configuration_is_bounded() -> None:
    fine = {"epochs": 3, "batch_size": 16, "max_length": 256, "lora": {"r": 8},
            "text_column": "text"}
    assert check_config(fine) == fine
    for bad in ({"epochs": 1e9}, {"max_steps": 10**9}, {"batch_size": 100_000},
                {"max_length": 10**6}, {"max_train_samples": 10**9}, {"lora": {"r": 4096}},
                {"text_column": "x" * 1000}):
        with pytest.raises(ConfigurationError, match="out of bounds"):
            check_config(bad)
    with pytest.raises(ConfigurationError):
        check_config(["not", "a", "mapping"])
