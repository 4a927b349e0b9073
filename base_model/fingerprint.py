"""What an adapter must match: the served base model's identity and projection shapes.

Read from a loaded model, a model folder or its ``config.json``; adapter validation
(``adapters/validation.py``) and plain-PEFT manifest synthesis (``adapters/plain_peft.py``)
both check packages against it, so it lives with the base model, below both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswap.base_model.families import projection_shapes
from loraswap.base_model.loading import BaseModelInfo, weights_sha256
from loraswap.base_model.loading import read_manifest as read_base_manifest
from loraswap.core.errors import ConfigurationError


@dataclass(frozen=True)
class BaseModelFingerprint:
    """What an adapter must match: the base model's identity and its projection shapes.

    ``projection_shapes`` maps a Llama projection name to ``(in_features, out_features)``.
    """

    name: str
    weights_sha256: str
    num_layers: int
    projection_shapes: dict[str, tuple[int, int]]
    hidden_size: int

    @classmethod
    def from_config(cls, name: str, sha256: str, config: dict[str, Any]) -> BaseModelFingerprint:
        """Fingerprint from a model's ``config.json`` dict plus its name and weights hash."""
        try:
            return cls(
                name=name,
                weights_sha256=sha256,
                num_layers=int(config["num_hidden_layers"]),
                projection_shapes=projection_shapes(config),
                hidden_size=int(config["hidden_size"]),
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise ConfigurationError(f"base model config.json lacks a usable {exc}") from exc

    @classmethod
    def from_folder(cls, path: Path) -> BaseModelFingerprint:
        """Read ``config.json``; the weights hash from the fetch manifest, else computed."""
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read {path / 'config.json'}: {exc}") from exc
        manifest = read_base_manifest(path) or {}
        sha = manifest.get("weights_sha256")
        if not (isinstance(sha, str) and len(sha) == 64):
            sha = weights_sha256(path)
        name = manifest.get("name")
        # Same naming rule as base_model.loading.load_base_model.
        name = name if isinstance(name, str) and name else path.name
        return cls.from_config(name, sha, config)

    @classmethod
    def from_loaded(cls, info: BaseModelInfo, config_dict: dict[str, Any]) -> BaseModelFingerprint:
        """Fingerprint of a loaded base model (``model.config.to_dict()``)."""
        return cls.from_config(info.name, info.weights_sha256, config_dict)

    def describe(self) -> str:
        """``name (sha256 …)`` for error messages."""
        return f"{self.name} (weights sha256 {self.weights_sha256})"
