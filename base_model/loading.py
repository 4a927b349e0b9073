"""Loading the base model: the one place the service and training get it from.

The base model is a causal LM of a Llama-style family (see :mod:`loraswap.base_model.families`)
stored as safetensors plus a tokenizer (``loraswap model fetch`` provides
SmolLM2-135M-Instruct). It can be loaded in four
precisions (:class:`Quantization`). Whatever was asked for, :class:`BaseModelInfo` reports
what the loaded model really is: the modules are inspected after loading, and a load that
did not produce the requested quantization fails instead of quietly running something else.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import re
import sys
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from loraswap.base_model.families import SUPPORTED_MODEL_TYPES as SUPPORTED_MODEL_TYPES
from loraswap.base_model.families import check_model_config
from loraswap.base_model.precision import CpuFeatures, choose_cpu_precision
from loraswap.core.errors import ModelLoadError, QuantizationUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_BASE_MODEL_DIR: Path = (
    Path.home() / ".cache" / "loraswap" / "models" / "SmolLM2-135M-Instruct"
)
"""Where ``loraswap model fetch`` puts the base model and where everything looks by default."""

MANIFEST_NAME = "loraswap-manifest.json"
"""File written by ``loraswap model fetch`` beside the weights (name, source, checksums)."""

FETCH_HINT = "run `loraswap model fetch` to download the base model"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 1 << 20


class Quantization(StrEnum):
    """How the base model's weights are held in memory."""

    NF4 = "nf4"
    """bitsandbytes 4-bit NormalFloat, double quantization requested (QLoRA), bf16 compute."""
    INT8 = "int8"
    """bitsandbytes LLM.int8 (8-bit weights, fp16 compute with outlier decomposition)."""
    BF16 = "bf16"
    """Plain bfloat16 weights."""
    FP32 = "fp32"
    """Plain float32 weights."""


@dataclass(frozen=True)
class BaseModelInfo:
    """What was loaded, as observed on the loaded model (not as requested)."""

    name: str
    path: Path
    quantization: Quantization
    compute_dtype: str
    weight_format: str
    device: str
    weights_sha256: str
    memory_bytes: int
    load_seconds: float
    precision_reason: str = ""
    """Why this precision: explicit, or chosen from the device and CPU features."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths and enums as strings)."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["quantization"] = str(self.quantization)
        return data


@dataclass
class LoadedBaseModel:
    """A loaded base model (in eval mode), its tokenizer and the facts about it."""

    model: Any  # transformers.PreTrainedModel (untyped library)
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    info: BaseModelInfo


def resolve_device(requested: str | None) -> torch.device:
    """Turn a device string into a usable :class:`torch.device`.

    ``None`` picks ``cuda`` when a GPU is visible, else ``cpu``. Anything that is not a
    valid, present CPU or CUDA device raises :class:`ModelLoadError` naming it.
    """
    if requested is None:
        return _cuda_device(None) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested.strip())
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"invalid device {requested!r}: expected 'cpu', 'cuda' or 'cuda:N' ({exc})"
        ) from exc
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ModelLoadError(
            f"unsupported device {requested!r}: only 'cpu' and 'cuda[:N]' are supported"
        )
    if not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} requested but CUDA is not available here")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelLoadError(
            f"device {requested!r} requested but only {torch.cuda.device_count()} "
            "CUDA device(s) are visible"
        )
    return _cuda_device(device.index)


def _cuda_device(index: int | None) -> torch.device:
    # An explicit index keeps device_map and the reported device unambiguous.
    return torch.device("cuda", torch.cuda.current_device() if index is None else index)


def resolve_quantization(requested: Quantization | None, device: torch.device,
                         cpu: CpuFeatures | None = None) -> Quantization:
    """The quantization to use (see :func:`choose_quantization`)."""
    return choose_quantization(requested, device, cpu)[0]


def choose_quantization(requested: Quantization | None, device: torch.device,
                        cpu: CpuFeatures | None = None) -> tuple[Quantization, str]:
    """The quantization to use and why: the requested one, else nf4 on CUDA and, on a CPU,
    bf16 where it is native (AVX512-BF16 or AMX, see :mod:`loraswap.base_model.precision`), fp32
    otherwise. ``cpu`` defaults to this machine's features.

    bitsandbytes' CPU kernels are slower than plain matmuls for a model this small, so the
    CPU default is a plain precision; on a GPU nf4 saves memory for many adapters.
    """
    if requested is not None:
        try:
            quant = Quantization(requested)
        except ValueError as exc:
            choices = ", ".join(q.value for q in Quantization)
            raise QuantizationUnavailableError(
                f"unknown quantization {requested!r}; choose one of {choices}"
            ) from exc
        return quant, f"{quant}: chosen explicitly"
    if device.type == "cuda":
        return Quantization.NF4, "nf4: the default on CUDA"
    choice = choose_cpu_precision(None, cpu or CpuFeatures.detect())
    return Quantization(choice.value), choice.reason


def weights_sha256(path: Path) -> str:
    """SHA-256 over the bytes of ``path/*.safetensors``, concatenated in sorted name order.

    For a single-file model this equals ``sha256sum model.safetensors``.
    """
    files = sorted(p for p in Path(path).glob("*.safetensors") if p.is_file())
    if not files:
        raise ModelLoadError(f"no *.safetensors files in {path}; {FETCH_HINT}")
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The fetch manifest of a model folder, or ``None`` if absent or unreadable."""
    manifest = Path(path) / MANIFEST_NAME
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable manifest %s: %s", manifest, exc)
        return None
    return data if isinstance(data, dict) else None


def load_base_model(
    path: Path,
    quantization: Quantization | None = None,
    device: str | None = None,
) -> LoadedBaseModel:
    """Load the base model and tokenizer from a local folder.

    Only local safetensors are read (no hub, no pickle, no remote code). Raises
    :class:`ModelLoadError` for a missing/incomplete folder or an unsupported architecture
    and :class:`QuantizationUnavailableError` when the requested quantization cannot run
    here (bitsandbytes missing or its kernels failing on this device).

    nf4 on a CPU with AVX512-BF16: bitsandbytes repacks the 4-bit weights at the first
    forward pass made in eval mode (faster inference kernel, double quant expanded), and
    from then on no gradient flows through them. Serving is unaffected; training must make
    every forward pass of a model it trains in train mode.
    """
    started = time.perf_counter()
    path = Path(path).expanduser()
    model_type = _check_model_folder(path)
    torch_device = resolve_device(device)
    quant, precision_reason = choose_quantization(quantization, torch_device)
    if quant in (Quantization.NF4, Quantization.INT8):
        _require_bitsandbytes(quant)

    # Imported here so that merely importing this module (settings, CLI --help) stays fast.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # transformers raises many unrelated types for a bad folder
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {exc}; {FETCH_HINT}") from exc

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path),
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=True,
            device_map={"": str(torch_device)},
            **_precision_kwargs(quant),
        )
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the {model_type} model in {path} as {quant} on {torch_device}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    model.eval()

    effective, compute_dtype, weight_format = _inspect_precision(model)
    if effective is None or effective is not quant:
        # Never serve something other than what was asked for (e.g. a transformers release
        # that ignores the quantization config would otherwise pass unnoticed).
        raise QuantizationUnavailableError(
            f"asked for {quant} but the loaded model is {weight_format}; refusing to continue"
        )
    if quant in (Quantization.NF4, Quantization.INT8):
        # Loaded is not yet working: bitsandbytes' CPU kernels can be missing or broken.
        _smoke_test(model, quant, torch_device)

    manifest = read_manifest(path) or {}
    sha = manifest.get("weights_sha256")
    if not (isinstance(sha, str) and _SHA256_RE.match(sha)):
        sha = weights_sha256(path)
    name = manifest.get("name")
    info = BaseModelInfo(
        name=name if isinstance(name, str) and name else path.name,
        path=path,
        quantization=effective,
        compute_dtype=compute_dtype,
        weight_format=weight_format,
        device=str(next(model.parameters()).device),
        weights_sha256=sha,
        memory_bytes=int(model.get_memory_footprint()),
        load_seconds=time.perf_counter() - started,
        precision_reason=precision_reason,
    )
    logger.info(
        "loaded base model %s (%s) on %s in %.1fs, %.1f MiB; precision %s",
        info.name,
        info.weight_format,
        info.device,
        info.load_seconds,
        info.memory_bytes / 2**20,
        info.precision_reason,
    )
    return LoadedBaseModel(model=model, tokenizer=tokenizer, info=info)


def _check_model_folder(path: Path) -> str:
    """Fail early, with the fix in the message, on anything that cannot be a base model."""
    if not path.exists():
        raise ModelLoadError(f"base model folder {path} does not exist; {FETCH_HINT}")
    if not path.is_dir():
        raise ModelLoadError(f"base model path {path} is not a folder; {FETCH_HINT}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json, so it is no model folder; {FETCH_HINT}")
    if not any(p.is_file() for p in path.glob("*.safetensors")):
        raise ModelLoadError(
            f"{path} has no *.safetensors weights (only safetensors are loaded); {FETCH_HINT}"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config_file}: {exc}; {FETCH_HINT}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file} is not a JSON object; {FETCH_HINT}")
    try:
        check_model_config(config)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc} (in {config_file})") from exc
    return str(config["model_type"])


def _require_bitsandbytes(quant: Quantization) -> None:
    try:
        importlib.import_module("bitsandbytes")
    except Exception as exc:  # a broken native library raises more than ImportError
        raise QuantizationUnavailableError(
            f"{quant} needs bitsandbytes, which cannot be imported here "
            f"({type(exc).__name__}: {exc}); use bf16 or fp32 instead"
        ) from exc


def _precision_kwargs(quant: Quantization) -> dict[str, Any]:
    """``from_pretrained`` arguments for one quantization."""
    if quant is Quantization.FP32:
        return {"dtype": torch.float32}
    if quant is Quantization.BF16:
        return {"dtype": torch.bfloat16}

    from transformers import BitsAndBytesConfig

    if quant is Quantization.NF4:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        # Embeddings, norms and lm_head stay unquantized: keep them in the compute dtype.
        return {"quantization_config": config, "dtype": torch.bfloat16}
    # LLM.int8 casts activations to float16 for its matmuls; holding the unquantized rest in
    # float16 too avoids a cast (and a bitsandbytes warning) on every Linear call.
    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "dtype": torch.float16}


def _inspect_precision(model: Any) -> tuple[Quantization | None, str, str]:
    """(quantization, compute dtype, weight format) as found in the model's modules.

    The quantization is ``None`` when what was loaded matches none of :class:`Quantization`.
    """
    linear4: list[Any] = []
    linear8: list[Any] = []
    plain: list[torch.nn.Linear] = []
    # Only a model loaded after bitsandbytes was imported can hold its modules: importing it
    # here for a bf16/fp32 base would cost its start-up (and its CPU backend's kernel
    # lookup) for nothing.
    bnb = sys.modules.get("bitsandbytes")
    linear4_type: type | None = bnb.nn.Linear4bit if bnb is not None else None
    linear8_type: type | None = bnb.nn.Linear8bitLt if bnb is not None else None
    for module in model.modules():
        if linear4_type is not None and isinstance(module, linear4_type):
            linear4.append(module)
        elif linear8_type is not None and isinstance(module, linear8_type):
            linear8.append(module)
        elif isinstance(module, torch.nn.Linear):
            plain.append(module)

    if linear4:
        states = [getattr(m.weight, "quant_state", None) for m in linear4]
        quant_types = sorted({str(getattr(m.weight, "quant_type", "?")) for m in linear4})
        # On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights at their first forward
        # pass and expands double-quantized absmax to fp32 then: report the state as it is.
        packed = all(getattr(s, "packing_format_for_cpu", False) for s in states)
        nested = all(bool(getattr(s, "nested", False)) for s in states)
        details = ["bitsandbytes 4-bit"]
        if packed:
            details.append("CPU-packed")
        details.append("double quant" if nested else "no double quant")
        fmt = f"{'+'.join(quant_types)} ({', '.join(details)})"
        first = linear4[0]
        if (
            not packed
            and first.weight.device.type == "cpu"
            and getattr(first, "support_avx512bf16_for_cpu", False)
        ):
            fmt = fmt[:-1] + "; the first eval-mode call repacks it for AVX512-BF16, "
            fmt += "without double quant)"
        compute = _dtype_name(getattr(linear4[0], "compute_dtype", None) or torch.float32)
        return (Quantization.NF4 if quant_types == ["nf4"] else None), compute, fmt
    if linear8:
        int8 = all(m.weight.dtype == torch.int8 for m in linear8)
        fmt = "int8 (bitsandbytes LLM.int8)" if int8 else "bitsandbytes 8-bit (not quantized)"
        # MatMul8bitLt always computes in float16, whatever dtype the inputs have.
        return (Quantization.INT8 if int8 else None), "float16", fmt

    dtypes = sorted({_dtype_name(m.weight.dtype) for m in plain}) or ["unknown"]
    fmt = "+".join(dtypes)
    # float16 or mixed dtypes map to None: no Quantization describes them.
    effective = {"bfloat16": Quantization.BF16, "float32": Quantization.FP32}.get(fmt)
    return effective, fmt, fmt


def _smoke_test(model: Any, quant: Quantization, device: torch.device) -> None:
    """Run the quantized kernels once so that broken ones fail at load, not later.

    Nothing the model keeps is changed: on CPUs with AVX512-BF16 an eval-mode forward makes
    bitsandbytes repack every 4-bit weight for its inference kernel, after which gradients
    no longer flow through those layers (QLoRA training would silently break). So the whole
    model runs in train mode (the training path, no repacking), and the inference kernel
    runs on a copy of one quantized layer.
    """
    import bitsandbytes as bnb

    token = model.config.bos_token_id
    input_ids = torch.tensor([[token if isinstance(token, int) else 0]], device=device)
    layer = next(
        (m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt)),
        None,
    )
    try:
        with torch.no_grad():
            model.train()
            try:
                outputs = [model(input_ids=input_ids).logits]
            finally:
                model.eval()
            if layer is not None:
                probe = copy.deepcopy(layer).eval()
                # Linear4bit casts to its compute dtype; LLM.int8 expects float16 inputs.
                dtype = getattr(probe, "compute_dtype", None) or torch.float16
                outputs.append(probe(torch.randn(2, probe.in_features, dtype=dtype, device=device)))
                del probe
    except Exception as exc:
        raise QuantizationUnavailableError(
            f"{quant} loaded but bitsandbytes cannot run it on {device} "
            f"({type(exc).__name__}: {exc}); use bf16 or fp32 instead"
        ) from exc
    if not all(bool(torch.isfinite(out).all()) for out in outputs):
        raise QuantizationUnavailableError(
            f"{quant} on {device} produces non-finite values; use bf16 or fp32 instead"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
