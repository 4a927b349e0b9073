"""Which floating-point precision this machine runs fastest: bf16 only where it is native.

bf16 halves the memory of a plain base model, but only CPUs with AVX512-BF16 or AMX
multiply bf16 in hardware. Elsewhere PyTorch emulates it: measured on an AVX2-only AMD
EPYC, bf16 serving was 4x slower than fp32 (46.7 against 182.8 output tok/s) and a bf16
training step 17x slower (65 s against 3.7 s). So the default on a CPU is bf16 only where
the CPU flags show native bf16 *and* torch dispatches its AVX-512 kernels (torch's CPU
capability, which ``ATEN_CPU_CAPABILITY`` can lower); fp32 everywhere else. An explicit
choice always wins. The service, ``loraswap train`` and ``loraswap bench`` all decide here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""``/proc/cpuinfo`` flags of CPUs that compute in bf16 natively (AMX tiles, AVX512-BF16)."""

AVX512_CAPABILITIES = frozenset({"AVX512", "AVX512_BF16", "AMX", "AMX_BF16"})
"""``torch.backends.cpu.get_cpu_capability()`` values meaning torch uses AVX-512 kernels."""

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU offers, as torch and the kernel report it."""

    model_name: str
    capability: str
    flags: frozenset[str]

    @classmethod
    def detect(cls, cpuinfo: Path = CPUINFO) -> CpuFeatures:
        """Read this machine's CPU model, flags (Linux ``/proc/cpuinfo``) and torch capability.

        Without a readable ``cpuinfo`` (not Linux) the flags are empty, which means fp32.
        """
        import torch

        try:
            text = cpuinfo.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        return cls.from_cpuinfo(text, capability=torch.backends.cpu.get_cpu_capability())

    @classmethod
    def from_cpuinfo(cls, text: str, *, capability: str) -> CpuFeatures:
        """Parse the first processor's ``model name`` and ``flags`` out of ``cpuinfo`` text."""
        fields: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            key = key.strip()
            if sep and key in ("model name", "flags") and key not in fields:
                fields[key] = value.strip()
        return cls(model_name=fields.get("model name", "unknown CPU"), capability=capability,
                   flags=frozenset(fields.get("flags", "").split()))

    @property
    def native_bf16_flags(self) -> tuple[str, ...]:
        """The native-bf16 flags this CPU has (empty when it has none)."""
        return tuple(flag for flag in NATIVE_BF16_FLAGS if flag in self.flags)

    @property
    def native_bf16(self) -> bool:
        """True when bf16 matmuls run in hardware and torch uses its AVX-512 kernels."""
        return bool(self.native_bf16_flags) and self.capability in AVX512_CAPABILITIES

    def describe(self) -> str:
        """One line for logs and reports: model, torch capability and bf16 flags."""
        flags = ", ".join(self.native_bf16_flags) or "no avx512_bf16/amx_bf16"
        return f"{self.model_name} (torch capability {self.capability}; {flags})"


@dataclass(frozen=True)
class PrecisionChoice:
    """A precision (``bf16`` or ``fp32``, or the explicit value) and why it was chosen."""

    value: str
    reason: str


def choose_cpu_precision(requested: str | None, cpu: CpuFeatures, *,
                         source: str = "the explicit setting") -> PrecisionChoice:
    """``requested`` when given (``None`` or ``"auto"`` mean choose), else bf16 on native bf16
    hardware and fp32 otherwise; ``source`` names where an explicit value came from."""
    if requested is not None and requested != "auto":
        return PrecisionChoice(requested, f"{requested} from {source} (CPU: {cpu.describe()})")
    if cpu.native_bf16:
        return PrecisionChoice("bf16", f"bf16: native bf16 on this CPU, {cpu.describe()}")
    why = ("torch does not use its AVX-512 kernels" if cpu.native_bf16_flags
           else "no native bf16, so bf16 would be emulated (4-17x slower)")
    return PrecisionChoice("fp32", f"fp32: {why} on this CPU, {cpu.describe()}")
