"""What a package manifest may tell a retraining run: its training data only under its own
adapter's ``training-data/`` keys, and a training configuration within bounds.

A package is written by a tenant (``loraswap train --push`` or by hand), and the run reads
its manifest with the store credentials of the service: unchecked, ``training.data_store``
could name another tenant's objects (read into the candidate, then into its evaluation), and
``training.config`` a run that never ends or exhausts the node.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loraswap.core.errors import ConfigurationError
from loraswap.jobs.training_data import DATA_PREFIX

DATA_ROLES = frozenset({"train", "test", "eval", "trained_on"})
_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,160}$")


def check_data_store(tenant: str, adapter: str, data_store: Any) -> dict[str, str]:
    """``training.data_store`` if every key lies under ``training-data/{tenant}/{adapter}/``
    (one file name, no ``..``), else :class:`ConfigurationError` naming the key."""
    if not isinstance(data_store, dict):
        raise ConfigurationError("the manifest's training.data_store is not a mapping")
    prefix = f"{DATA_PREFIX}{tenant}/{adapter}/"
    checked: dict[str, str] = {}
    for role, key in data_store.items():
        if role not in DATA_ROLES:
            raise ConfigurationError(f"training.data_store has an unknown role {role!r} "
                                     f"(known: {', '.join(sorted(DATA_ROLES))})")
        name = key[len(prefix):] if isinstance(key, str) and key.startswith(prefix) else None
        if name is None or not _FILE.fullmatch(name) or ".." in name:
            raise ConfigurationError(
                f"training.data_store[{role!r}] = {str(key)[:200]!r} is not a file under "
                f"{prefix}: a run reads only its own adapter's training data")
        checked[str(role)] = key
    return checked


class _Lora(BaseModel):
    model_config = ConfigDict(extra="allow")

    r: int | None = Field(default=None, ge=1, le=256)


class RetrainConfigBounds(BaseModel):
    """Upper bounds on ``training.config`` for a run the service starts (the training CLI
    itself keeps its own, looser limits): about a day of CPU work on the largest tiny
    model at most, and no setting that changes where the run reads or writes."""

    model_config = ConfigDict(extra="allow")

    epochs: float | None = Field(default=None, gt=0, le=50)
    max_steps: int | None = Field(default=None, ge=1, le=100_000)
    batch_size: int | None = Field(default=None, ge=1, le=512)
    grad_accum: int | None = Field(default=None, ge=1, le=256)
    max_length: int | None = Field(default=None, ge=8, le=8192)
    max_train_samples: int | None = Field(default=None, ge=1, le=1_000_000)
    max_eval_samples: int | None = Field(default=None, ge=1, le=100_000)
    eval_every: int | None = Field(default=None, ge=1, le=100_000)
    patience: int | None = Field(default=None, ge=1, le=100)
    text_column: str | None = Field(default=None, max_length=200)
    label_column: str | None = Field(default=None, max_length=200)
    data_format: str | None = Field(default=None, max_length=20)
    lora: _Lora | None = None


def check_config(config: Any) -> dict[str, Any]:
    """``training.config`` within :class:`RetrainConfigBounds`, else
    :class:`ConfigurationError` naming each field out of bounds."""
    if not isinstance(config, dict):
        raise ConfigurationError("the manifest's training.config is not a mapping")
    try:
        RetrainConfigBounds.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigurationError(f"training.config is out of bounds for a retraining run: "
                                 f"{problems}") from None
    return dict(config)
