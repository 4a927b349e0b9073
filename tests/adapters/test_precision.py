"""The CPU precision rule: bf16 only where the CPU computes it natively, else fp32."""

from __future__ import annotations

from pathlib import Path

import torch

from loraswap.base_model.loading import Quantization, choose_quantization, load_base_model
from loraswap.base_model.precision import CpuFeatures, choose_cpu_precision

ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
processor\t: 1
model name\t: should not be read
"""
ZEN3_CPUINFO = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 fma
"""
SAPPHIRE_RAPIDS_CPUINFO = """model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: avx2 avx512f amx_tile amx_bf16 amx_int8
"""


def test_avx512_bf16_cpu_runs_bf16() -> None:
    cpu = CpuFeatures.from_cpuinfo(ZEN4_CPUINFO, capability="AVX512")
    assert cpu.model_name == "AMD EPYC 9R14"
    choice = choose_cpu_precision(None, cpu)
    assert choice.value == "bf16"
    assert "avx512_bf16" in choice.reason and "AVX512" in choice.reason


def test_amx_cpu_runs_bf16() -> None:
    cpu = CpuFeatures.from_cpuinfo(SAPPHIRE_RAPIDS_CPUINFO, capability="AVX512")
    assert choose_cpu_precision("auto", cpu).value == "bf16"


def test_avx2_only_cpu_runs_fp32_and_says_why() -> None:
    cpu = CpuFeatures.from_cpuinfo(ZEN3_CPUINFO, capability="AVX2")
    choice = choose_cpu_precision(None, cpu)
    assert choice.value == "fp32"
    assert "AMD EPYC 7B13" in choice.reason and "AVX2" in choice.reason


def test_bf16_flags_without_avx512_kernels_run_fp32() -> None:
    """ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU: torch's elementwise kernels are AVX2 ones."""
    cpu = CpuFeatures.from_cpuinfo(ZEN4_CPUINFO, capability="AVX2")
    choice = choose_cpu_precision(None, cpu)
    assert choice.value == "fp32"
    assert "AVX-512 kernels" in choice.reason


def test_explicit_precision_wins_on_both_kinds_of_cpu() -> None:
    for text, capability in ((ZEN4_CPUINFO, "AVX512"), (ZEN3_CPUINFO, "AVX2")):
        cpu = CpuFeatures.from_cpuinfo(text, capability=capability)
        assert choose_cpu_precision("bf16", cpu, source="--precision").value == "bf16"
        fp32 = choose_cpu_precision("fp32", cpu, source="--precision")
        assert fp32.value == "fp32" and "--precision" in fp32.reason


def test_service_default_follows_the_cpu() -> None:
    avx2 = CpuFeatures.from_cpuinfo(ZEN3_CPUINFO, capability="AVX2")
    zen4 = CpuFeatures.from_cpuinfo(ZEN4_CPUINFO, capability="AVX512")
    cpu_device = torch.device("cpu")
    assert choose_quantization(None, cpu_device, avx2)[0] is Quantization.FP32
    assert choose_quantization(None, cpu_device, zen4)[0] is Quantization.BF16
    assert choose_quantization(Quantization.BF16, cpu_device, avx2)[0] is Quantization.BF16


def test_detect_reads_the_given_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN3_CPUINFO)
    cpu = CpuFeatures.detect(cpuinfo)
    assert cpu.model_name == "AMD EPYC 7B13"
    assert cpu.capability == torch.backends.cpu.get_cpu_capability()
    assert not cpu.native_bf16
    assert not CpuFeatures.detect(tmp_path / "missing").native_bf16


def test_loaded_model_reports_why_its_precision(tiny_base_dir: Path) -> None:
    info = load_base_model(tiny_base_dir, Quantization.FP32, "cpu").info
    assert "explicit" in info.precision_reason
    assert info.as_dict()["precision_reason"] == info.precision_reason
    chosen = load_base_model(tiny_base_dir, None, "cpu").info
    expected = choose_cpu_precision(None, CpuFeatures.detect()).value
    assert str(chosen.quantization) == expected
    assert chosen.precision_reason.startswith(expected)
