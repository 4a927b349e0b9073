"""``loraswap train --precision auto`` follows the CPU; an explicit precision wins."""

from __future__ import annotations

from pathlib import Path

from loraswap.base_model.precision import CpuFeatures
from loraswap.training.runner import base_quantization
from tests.training.conftest import ConfigFactory

AVX2_ONLY = CpuFeatures("AMD EPYC 7B13", "AVX2", frozenset({"avx2", "fma"}))
NATIVE_BF16 = CpuFeatures("AMD EPYC 9R14", "AVX512", frozenset({"avx512f", "avx512_bf16"}))


def test_auto_is_the_default_and_follows_the_cpu(make_config: ConfigFactory,
                                                 csv_data: Path) -> None:
    cfg = make_config("seq-cls", csv_data)
    assert cfg.precision == "auto"
    assert base_quantization(cfg, AVX2_ONLY).value == "fp32"
    assert base_quantization(cfg, NATIVE_BF16).value == "bf16"


def test_explicit_precision_wins(make_config: ConfigFactory, csv_data: Path) -> None:
    bf16 = make_config("seq-cls", csv_data, precision="bf16")
    assert base_quantization(bf16, AVX2_ONLY).value == "bf16"
    fp32 = make_config("seq-cls", csv_data, precision="fp32")
    choice = base_quantization(fp32, NATIVE_BF16)
    assert choice.value == "fp32" and "--precision" in choice.reason
