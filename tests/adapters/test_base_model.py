"""Base-model loading: every quantization really is what the info says it is."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from transformers import LlamaForCausalLM

from loraswap.base_model import loading as base_model
from loraswap.base_model.loading import (
    MANIFEST_NAME,
    BaseModelInfo,
    Quantization,
    load_base_model,
    resolve_device,
    resolve_quantization,
    weights_sha256,
)
from loraswap.base_model.precision import CpuFeatures
from loraswap.core.errors import ModelLoadError, QuantizationUnavailableError


@pytest.fixture
def model_copy(tiny_base_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model that a test may damage."""
    return Path(shutil.copytree(tiny_base_dir, tmp_path / "model"))


def _reference_logits(folder: Path, input_ids: torch.Tensor,
                      weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """fp32 logits of the saved model, with ``weights`` (module name -> weight) replaced."""
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    modules = dict(model.named_modules())
    with torch.inference_mode():
        for name, weight in (weights or {}).items():
            modules[name].weight.copy_(weight)
        logits: torch.Tensor = model(input_ids=input_ids).logits
    return logits


# The wide-logits tiny model (tests/conftest.py): logits have a std of ~4 and a row spans
# ~25, so a tolerance of a few tenths is far below what a wrong weight would change.
IDS = torch.tensor([[1, 5, 9, 17, 30, 41]])


def _check_signal(reference: torch.Tensor) -> None:
    """Guard: the logits really are spread widely (the tolerances below assume it)."""
    assert reference.std().item() > 2.0


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="'bogus'"):
        resolve_device("bogus")
    with pytest.raises(ModelLoadError, match="'mps'"):
        resolve_device("mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_gpu() -> None:
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        resolve_device("cuda:0")


AVX2_EPYC = CpuFeatures("AMD EPYC (AVX2 only)", "AVX2", frozenset({"avx2", "fma"}))
ZEN4_EPYC = CpuFeatures("AMD EPYC (Zen 4)", "AVX512", frozenset({"avx512f", "avx512_bf16"}))


def test_resolve_quantization_defaults_and_explicit() -> None:
    assert resolve_quantization(None, torch.device("cpu"), ZEN4_EPYC) is Quantization.BF16
    assert resolve_quantization(None, torch.device("cpu"), AVX2_EPYC) is Quantization.FP32
    assert resolve_quantization(None, torch.device("cuda", 0)) is Quantization.NF4
    for quant in Quantization:
        assert resolve_quantization(quant, torch.device("cpu")) is quant
    assert resolve_quantization("int8", torch.device("cpu")) is Quantization.INT8  # type: ignore[arg-type]
    with pytest.raises(QuantizationUnavailableError, match="'int4'"):
        resolve_quantization("int4", torch.device("cpu"))  # type: ignore[arg-type]


def test_weights_sha256_hashes_sorted_shards(tmp_path: Path) -> None:
    (tmp_path / "b.safetensors").write_bytes(b"second")
    (tmp_path / "a.safetensors").write_bytes(b"first")
    (tmp_path / "notes.txt").write_bytes(b"ignored")
    assert weights_sha256(tmp_path) == hashlib.sha256(b"firstsecond").hexdigest()


def test_weights_sha256_of_single_file_is_its_sha256sum(tiny_base_dir: Path) -> None:
    data = (tiny_base_dir / "model.safetensors").read_bytes()
    assert weights_sha256(tiny_base_dir) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("quant", "dtype"),
    [(Quantization.FP32, torch.float32), (Quantization.BF16, torch.bfloat16)],
)
def test_plain_precisions_load_truthfully(
    tiny_base_dir: Path, wide_logits_base_dir: Path, quant: Quantization, dtype: torch.dtype
) -> None:
    loaded = load_base_model(tiny_base_dir, quant, "cpu")
    info = loaded.info
    assert info.quantization is quant
    assert info.compute_dtype == info.weight_format == str(dtype).removeprefix("torch.")
    assert {p.dtype for p in loaded.model.parameters()} == {dtype}
    assert not loaded.model.training
    assert info.device == "cpu"
    assert info.name == tiny_base_dir.name
    assert info.path == tiny_base_dir
    assert info.weights_sha256 == weights_sha256(tiny_base_dir)
    assert info.memory_bytes == loaded.model.get_memory_footprint() > 0
    assert info.load_seconds > 0
    # The weights are the saved ones, not a fresh random init; bf16 rounding (measured
    # max 0.08) stays far below the spread.
    wide = load_base_model(wide_logits_base_dir, quant, "cpu").model
    with torch.inference_mode():
        logits = wide(input_ids=IDS).logits.float()
    reference = _reference_logits(wide_logits_base_dir, IDS)
    _check_signal(reference)
    tolerance = 1e-4 if quant is Quantization.FP32 else 0.25
    torch.testing.assert_close(logits, reference, atol=tolerance, rtol=0)
    assert loaded.tokenizer.decode(loaded.tokenizer("paris")["input_ids"]) == "paris"


def test_nf4_loads_linear4bit_modules(tiny_base_dir: Path, wide_logits_base_dir: Path) -> None:
    loaded = load_base_model(tiny_base_dir, Quantization.NF4, "cpu")
    info = loaded.info
    assert info.quantization is Quantization.NF4
    assert info.weight_format.startswith("nf4 (bitsandbytes 4-bit, double quant")
    assert ("repacks it for AVX512-BF16" in info.weight_format) == bnb.functional.has_avx512bf16()
    assert info.compute_dtype == "bfloat16"
    layers = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    # 2 layers x (q, k, v, o, gate, up, down); lm_head stays unquantized.
    assert len(layers) == 14
    assert all(m.weight.quant_type == "nf4" for m in layers)
    assert all(m.weight.dtype == torch.uint8 for m in layers)
    # The load-time smoke test must leave the weights as loaded (double quant, not repacked).
    assert all(m.weight.quant_state.nested for m in layers)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    plain = load_base_model(tiny_base_dir, Quantization.BF16, "cpu")
    assert info.memory_bytes < plain.info.memory_bytes
    _assert_computes_its_4bit_weights(wide_logits_base_dir)


def _assert_computes_its_4bit_weights(folder: Path, device: str = "cpu") -> None:
    """The NF4 model computes what fp32 computes with its dequantized weights (only bf16
    compute error, measured max 0.1), and those weights really differ from the saved ones
    (NF4 rounding moves the logits by more than a whole unit)."""
    model = load_base_model(folder, Quantization.NF4, device).model
    dequantized = {
        name: bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float()
        for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    with torch.inference_mode():
        logits = model(input_ids=IDS.to(device)).logits.float().cpu()
    as_quantized = _reference_logits(folder, IDS, {k: w.cpu() for k, w in dequantized.items()})
    original = _reference_logits(folder, IDS)
    _check_signal(original)
    torch.testing.assert_close(logits, as_quantized, atol=0.3, rtol=0)
    assert (logits - original).abs().max().item() > 0.6  # it is not the fp32 model


@pytest.mark.gpu
def test_nf4_on_cuda_computes_its_4bit_weights(wide_logits_base_dir: Path) -> None:
    """The product's design on CUDA: NF4 weights with the GPU kernels, same checks."""
    loaded = load_base_model(wide_logits_base_dir, Quantization.NF4, "cuda")
    assert loaded.info.device.startswith("cuda") and loaded.info.quantization is Quantization.NF4
    _assert_computes_its_4bit_weights(wide_logits_base_dir, "cuda")


def test_nf4_model_stays_trainable_after_load(tiny_base_dir: Path) -> None:
    """QLoRA needs gradients through every frozen 4-bit layer to the layers below it.

    bitsandbytes' repacked CPU inference kernel has no backward; the load-time smoke test
    must not have switched the layers to it.
    """
    model = load_base_model(tiny_base_dir, Quantization.NF4, "cpu").model
    model.train()
    for layer in (m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)):
        x = torch.randn(2, layer.in_features, dtype=torch.bfloat16, requires_grad=True)
        layer(x).float().sum().backward()
        assert x.grad is not None
        assert x.grad.abs().sum().item() > 0


def test_int8_loads_linear8bitlt_modules(tiny_base_dir: Path, wide_logits_base_dir: Path) -> None:
    loaded = load_base_model(tiny_base_dir, Quantization.INT8, "cpu")
    info = loaded.info
    assert info.quantization is Quantization.INT8
    assert info.weight_format == "int8 (bitsandbytes LLM.int8)"
    assert info.compute_dtype == "float16"
    layers = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert len(layers) == 14
    assert all(m.weight.dtype == torch.int8 for m in layers)
    # LLM.int8 rounds weights and activations per row (measured max error 0.12 on logits
    # that span ~25); a wrong weight or scale would move them by whole units.
    wide = load_base_model(wide_logits_base_dir, Quantization.INT8, "cpu").model
    with torch.inference_mode():
        logits = wide(input_ids=IDS).logits.float()
    reference = _reference_logits(wide_logits_base_dir, IDS)
    _check_signal(reference)
    torch.testing.assert_close(logits, reference, atol=0.4, rtol=0)
    ids = torch.tensor([[1, 5, 9, 17]])
    generated = loaded.model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)


def test_info_prefers_manifest_name_and_checksum(model_copy: Path) -> None:
    manifest = {"name": "TinyLlama-Test", "weights_sha256": "ab" * 32}
    (model_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    info = load_base_model(model_copy, Quantization.FP32, "cpu").info
    assert info.name == "TinyLlama-Test"
    assert info.weights_sha256 == "ab" * 32
    as_json = json.loads(json.dumps(info.as_dict()))
    assert as_json["path"] == str(model_copy)
    assert as_json["quantization"] == "fp32"
    assert as_json["weights_sha256"] == "ab" * 32
    assert set(as_json) == set(BaseModelInfo.__dataclass_fields__)


def test_missing_folder_says_to_fetch(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError) as caught:
        load_base_model(missing)
    assert str(missing) in str(caught.value)
    assert "loraswap model fetch" in str(caught.value)


def test_missing_config_says_to_fetch(model_copy: Path) -> None:
    (model_copy / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"config\.json.*loraswap model fetch"):
        load_base_model(model_copy, Quantization.FP32, "cpu")


def test_missing_safetensors_says_to_fetch(model_copy: Path) -> None:
    (model_copy / "model.safetensors").rename(model_copy / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"safetensors.*loraswap model fetch"):
        load_base_model(model_copy, Quantization.FP32, "cpu")


def test_non_llama_model_type_is_rejected(model_copy: Path) -> None:
    config = json.loads((model_copy / "config.json").read_text())
    config["model_type"] = "gpt2"
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="unsupported model_type 'gpt2'"):
        load_base_model(model_copy, Quantization.FP32, "cpu")


def test_sliding_window_layers_are_rejected(model_copy: Path) -> None:
    config = json.loads((model_copy / "config.json").read_text())
    config["model_type"] = "qwen2"
    config["layer_types"] = ["full_attention", "sliding_attention"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="'qwen2' with sliding-window"):
        load_base_model(model_copy, Quantization.FP32, "cpu")


def test_corrupt_weights_are_a_model_load_error(model_copy: Path) -> None:
    (model_copy / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=str(model_copy)):
        load_base_model(model_copy, Quantization.FP32, "cpu")


def test_missing_bitsandbytes_is_quantization_unavailable(
    tiny_base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes the import fail
    with pytest.raises(QuantizationUnavailableError, match="nf4 needs bitsandbytes"):
        load_base_model(tiny_base_dir, Quantization.NF4, "cpu")


def test_failing_int8_kernels_are_reported_not_hidden(
    tiny_base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("no int8 kernel for this CPU")

    monkeypatch.setattr(bnb.nn.Linear8bitLt, "forward", broken)
    with pytest.raises(QuantizationUnavailableError, match=r"int8 .*no int8 kernel"):
        load_base_model(tiny_base_dir, Quantization.INT8, "cpu")


def test_quantization_that_did_not_happen_is_refused(
    tiny_base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate a transformers that ignores the quantization config: the model comes back
    # as plain bf16, and load_base_model must not report (or accept) it as nf4.
    monkeypatch.setattr(base_model, "_precision_kwargs", lambda quant: {"dtype": torch.bfloat16})
    with pytest.raises(QuantizationUnavailableError, match=r"asked for nf4 .* bfloat16"):
        load_base_model(tiny_base_dir, Quantization.NF4, "cpu")
