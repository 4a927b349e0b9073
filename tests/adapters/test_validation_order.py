"""Validation does the cheap checks before the expensive ones (issue 13, item 13): factor
shapes are checked from the safetensors header before any tensor is loaded or converted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraswap.adapters.lora_format import WEIGHTS_FILE
from loraswap.adapters.validation import ValidationLimits, validate_package
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import AdapterIncompatibleError
from tests.adapters.conftest import PackageBuilder, seal


def _widen_one_factor(folder: Path) -> str:
    """Replace one lora_A by a bf16 tensor 64x too wide; returns its key."""
    tensors = load_file(str(folder / WEIGHTS_FILE))
    key = next(k for k in sorted(tensors) if "lora_A" in k)
    rank, width = tensors[key].shape
    tensors[key] = torch.zeros(rank, width * 64, dtype=torch.bfloat16)
    save_file(tensors, str(folder / WEIGHTS_FILE))
    seal(folder)
    return key


def test_wrong_factor_shape_is_refused_before_tensors_are_loaded(
        build_package: PackageBuilder, base_fingerprint: BaseModelFingerprint,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = build_package()
    _widen_one_factor(folder)

    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("tensors were loaded before their shapes were checked")

    monkeypatch.setattr("loraswap.adapters.lora_format.load_file", must_not_load)
    with pytest.raises(AdapterIncompatibleError, match=r"lora_A .*expected"):
        validate_package(folder, base_fingerprint, ValidationLimits())


def test_wrong_factor_shape_is_named_with_the_real_reader_too(
        build_package: PackageBuilder, base_fingerprint: BaseModelFingerprint) -> None:
    folder = build_package()
    _widen_one_factor(folder)
    with pytest.raises(AdapterIncompatibleError, match=r"layer \d+ \w+_proj: lora_A"):
        validate_package(folder, base_fingerprint, ValidationLimits())
