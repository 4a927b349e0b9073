"""One real malformed package per validation rule, each refused through ``register()``.

Every rejected registration must leave the store byte-identical (snapshot of every key and,
for the folder store, every file on disk).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraswap.adapters.lora_format import CONFIG_FILE, WEIGHTS_FILE
from loraswap.adapters.package import MANIFEST_FILE, PROFILE_FILE, TaskKind, read_manifest
from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import FileSystemStore
from loraswap.adapters.validation import ManifestDefaults, ValidationLimits, validate_package
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import (
    AdapterIncompatibleError,
    AdapterValidationError,
    LoraswapError,
    PayloadTooLargeError,
)
from tests.adapters.conftest import PackageBuilder, make_store, refused, seal

Breaker = Callable[[Path], None]


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def _edit_tensors(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(folder / WEIGHTS_FILE))
    edit(tensors)
    save_file(tensors, str(folder / WEIGHTS_FILE))


def _first(tensors: dict[str, torch.Tensor], fragment: str) -> str:
    return next(key for key in sorted(tensors) if fragment in key)


@pytest.fixture
def registry(tmp_path: Path, base_fingerprint: BaseModelFingerprint) -> AdapterRegistry:
    store = FileSystemStore(tmp_path / "store")
    return AdapterRegistry(store, base_fingerprint, ValidationLimits(), tmp_path / "cache")


def test_valid_package_registers(registry: AdapterRegistry, build_package: PackageBuilder,
                                 base_fingerprint: BaseModelFingerprint) -> None:
    version = registry.register("acme", "chat", build_package())
    assert version.version == 1 and version.manifest.tenant == "acme"
    assert version.manifest.base_model.weights_sha256 == base_fingerprint.weights_sha256


# --- files --------------------------------------------------------------------------------

def _pickle(folder: Path) -> None:
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")


def _unknown(folder: Path) -> None:
    (folder / "README.md").write_text("hello")


def _symlink(folder: Path) -> None:
    (folder / PROFILE_FILE).symlink_to(folder / CONFIG_FILE)


def _subfolder(folder: Path) -> None:
    (folder / "nested").mkdir()


def _missing_weights(folder: Path) -> None:
    (folder / WEIGHTS_FILE).unlink()


def _missing_listed(folder: Path) -> None:
    (folder / PROFILE_FILE).write_text("{}")
    seal(folder)
    (folder / PROFILE_FILE).unlink()


def _unlisted(folder: Path) -> None:
    (folder / PROFILE_FILE).write_text("{}")


def _bad_sha(folder: Path) -> None:
    _edit_tensors(folder, lambda t: t.__setitem__(_first(t, "lora_B"),
                                                  t[_first(t, "lora_B")] * 2))


def _config_garbage(folder: Path) -> None:
    (folder / CONFIG_FILE).write_text("{not json")
    seal(folder)


def _manifest_garbage(folder: Path) -> None:
    (folder / MANIFEST_FILE).write_text("[1, 2")


def _manifest_bad_field(folder: Path) -> None:
    seal(folder, format_version=7)


def _no_manifest(folder: Path) -> None:
    (folder / MANIFEST_FILE).unlink()


FILE_RULES: list[tuple[str, Breaker, type[LoraswapError], str]] = [
    ("pickle", _pickle, AdapterValidationError, "adapter_model.bin is a pickle"),
    ("unknown file", _unknown, AdapterValidationError, "unknown file 'README.md'"),
    ("symlink", _symlink, AdapterValidationError, "profile.json is a link"),
    ("folder", _subfolder, AdapterValidationError, "nested is not a plain file"),
    ("missing weights", _missing_weights, AdapterValidationError,
     "missing adapter_model.safetensors"),
    ("missing listed", _missing_listed, AdapterValidationError,
     "lists profile.json but the file is missing"),
    ("unlisted", _unlisted, AdapterValidationError, "profile.json is not listed"),
    ("bad sha256", _bad_sha, AdapterValidationError, "adapter_model.safetensors has sha256"),
    ("config not json", _config_garbage, AdapterValidationError,
     "adapter_config.json is not valid JSON"),
    ("manifest not json", _manifest_garbage, AdapterValidationError,
     "loraswap.json is not valid JSON"),
    ("manifest field", _manifest_bad_field, AdapterValidationError,
     "format_version: .*7 is not supported"),
    ("no manifest", _no_manifest, AdapterValidationError, "missing loraswap.json"),
]


@pytest.mark.parametrize(("rule", "breaker", "error", "match"), FILE_RULES,
                         ids=[rule[0] for rule in FILE_RULES])
def test_file_rules(registry: AdapterRegistry, build_package: PackageBuilder, rule: str,
                    breaker: Breaker, error: type[LoraswapError], match: str) -> None:
    folder = build_package()
    breaker(folder)
    refused(registry, folder, error, match)


# --- base model, targets, tensors -------------------------------------------------------

def _wrong_base_sha(folder: Path) -> None:
    manifest = read_manifest(folder)
    seal(folder, base_model={"name": manifest.base_model.name, "weights_sha256": "0" * 64})


def _wrong_base_name(folder: Path) -> None:
    manifest = read_manifest(folder)
    seal(folder, base_model={"name": "Llama-70B",
                             "weights_sha256": manifest.base_model.weights_sha256})


def _unknown_target(folder: Path) -> None:
    _edit_json(folder / CONFIG_FILE, target_modules=["q_proj", "v_proj", "lm_head"])
    seal(folder, lora={**read_manifest(folder).lora.model_dump(),
                       "targets": ["lm_head", "q_proj", "v_proj"]})


def _unlisted_tensor(folder: Path) -> None:
    _edit_json(folder / CONFIG_FILE, target_modules=["q_proj"])
    seal(folder, lora={**read_manifest(folder).lora.model_dump(), "targets": ["q_proj"]})


def _wrong_shape(folder: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        key = _first(tensors, "q_proj.lora_A")
        tensors[key] = torch.zeros(4, 32)  # the base's hidden size is 64
    _edit_tensors(folder, edit)
    seal(folder)


def _extra_layer(folder: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        for key in [k for k in tensors if ".layers.1." in k]:
            tensors[key.replace(".layers.1.", ".layers.7.")] = tensors[key].clone()
    _edit_tensors(folder, edit)
    seal(folder)


def _nan(folder: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        key = _first(tensors, "lora_B")
        tensors[key] = tensors[key].clone()
        tensors[key][0, 0] = math.nan
    _edit_tensors(folder, edit)
    seal(folder)


def _inf(folder: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        key = _first(tensors, "lora_A")
        tensors[key] = tensors[key].clone()
        tensors[key][1, 2] = math.inf
    _edit_tensors(folder, edit)
    seal(folder)


def _summary_rank(folder: Path) -> None:
    seal(folder, lora={**read_manifest(folder).lora.model_dump(), "r": 16})


def _summary_alpha(folder: Path) -> None:
    seal(folder, lora={**read_manifest(folder).lora.model_dump(), "alpha": 3.0})


def _task_mismatch(folder: Path) -> None:
    seal(folder, task="seq-cls", labels=["a", "b"])


def _bidirectional_generator(folder: Path) -> None:
    seal(folder, attention="bidirectional")


def _split_words_for_generator(folder: Path) -> None:
    seal(folder, text_split="words")


TENSOR_RULES: list[tuple[str, Breaker, type[LoraswapError], str]] = [
    ("base sha", _wrong_base_sha, AdapterIncompatibleError,
     r"weights sha256 0{64}\), but this server runs .*weights sha256 [0-9a-f]{64}"),
    ("base name", _wrong_base_name, AdapterIncompatibleError, "trained on Llama-70B"),
    ("unknown target", _unknown_target, AdapterIncompatibleError,
     "target 'lm_head' is not a projection"),
    ("unlisted tensors", _unlisted_tensor, AdapterValidationError,
     r"unlisted tensors for \['v_proj'\]"),
    ("wrong shape", _wrong_shape, AdapterIncompatibleError,
     r"q_proj: lora_A \(4, 32\).*expected \(4, 64\)"),
    ("layer out of range", _extra_layer, AdapterIncompatibleError, "has only 2 layers"),
    ("nan", _nan, AdapterValidationError, "NaN or Inf"),
    ("inf", _inf, AdapterValidationError, "NaN or Inf"),
    ("summary rank", _summary_rank, AdapterValidationError, "lora summary disagrees.*r 16"),
    ("summary alpha", _summary_alpha, AdapterValidationError, "alpha 3.0 != 8.0"),
    ("task mismatch", _task_mismatch, AdapterValidationError,
     "says task seq-cls, but adapter_config.json has task_type 'CAUSAL_LM'"),
    ("bidirectional generator", _bidirectional_generator, AdapterValidationError,
     "attention 'bidirectional' is for seq-cls and token-cls adapters"),
    ("words split for a generator", _split_words_for_generator, AdapterValidationError,
     "text_split 'words' is for token-cls adapters; a causal-lm adapter reads its text"),
]


@pytest.mark.parametrize(("rule", "breaker", "error", "match"), TENSOR_RULES,
                         ids=[rule[0] for rule in TENSOR_RULES])
def test_tensor_rules(registry: AdapterRegistry, build_package: PackageBuilder, rule: str,
                      breaker: Breaker, error: type[LoraswapError], match: str) -> None:
    folder = build_package()
    breaker(folder)
    refused(registry, folder, error, match)


@pytest.mark.integration
def test_rejections_leave_an_s3_store_untouched(
    tmp_path: Path, request: pytest.FixtureRequest, base_fingerprint: BaseModelFingerprint,
    build_package: PackageBuilder,
) -> None:
    store = make_store("s3", tmp_path, request)
    registry = AdapterRegistry(store, base_fingerprint, ValidationLimits(), tmp_path / "c")
    registry.register("acme", "chat", build_package("good"))
    for i, (_, breaker, error, match) in enumerate([FILE_RULES[0], FILE_RULES[7],
                                                    TENSOR_RULES[0], TENSOR_RULES[6]]):
        folder = build_package(f"bad{i}")
        breaker(folder)
        refused(registry, folder, error, match)
    assert [v.version for v in registry.get("acme", "chat").versions] == [1]


# --- limits -------------------------------------------------------------------------------

def test_rank_above_limit(registry: AdapterRegistry, build_package: PackageBuilder) -> None:
    refused(registry, build_package(rank=80), AdapterIncompatibleError,
            "rank 80 exceeds the maximum 64")


def test_file_over_size_limit(tmp_path: Path, base_fingerprint: BaseModelFingerprint,
                              build_package: PackageBuilder) -> None:
    limits = ValidationLimits(max_file_bytes=4096)
    registry = AdapterRegistry(FileSystemStore(tmp_path / "s"), base_fingerprint, limits,
                               tmp_path / "c")
    refused(registry, build_package(), PayloadTooLargeError,
            "adapter_model.safetensors is .* bytes, over the limit of 4096")


def test_package_over_total_limit(tmp_path: Path, base_fingerprint: BaseModelFingerprint,
                                  build_package: PackageBuilder) -> None:
    folder = build_package()
    total = sum(p.stat().st_size for p in folder.iterdir())
    limits = ValidationLimits(max_upload_bytes=total - 1)
    registry = AdapterRegistry(FileSystemStore(tmp_path / "s"), base_fingerprint, limits,
                               tmp_path / "c")
    refused(registry, folder, PayloadTooLargeError, f"package is {total} bytes")


def test_too_many_files(tmp_path: Path, base_fingerprint: BaseModelFingerprint,
                        build_package: PackageBuilder) -> None:
    limits = ValidationLimits(max_files=2)
    registry = AdapterRegistry(FileSystemStore(tmp_path / "s"), base_fingerprint, limits,
                               tmp_path / "c")
    refused(registry, build_package(), PayloadTooLargeError, "3 files, more than the limit of 2")


# --- classification heads -----------------------------------------------------------------

@pytest.fixture
def classifier(make_classifier_adapter: Callable[..., Path], tmp_path: Path) -> Path:
    """A seq-cls package with 3 labels, sealed for the tiny base's fingerprint."""
    return make_classifier_adapter("cls", task="seq-cls", root=tmp_path / "cls")


def test_classifier_registers(registry: AdapterRegistry, classifier: Path) -> None:
    version = registry.register("acme", "sentiment", classifier)
    assert version.manifest.task is TaskKind.SEQ_CLS
    assert version.manifest.labels == ["negative", "neutral", "positive"]


def test_head_size_must_match_labels(registry: AdapterRegistry, classifier: Path) -> None:
    seal(classifier, labels=["negative", "positive"])
    refused(registry, classifier, AdapterValidationError,
            "classification head has 3 outputs, but the manifest lists 2 labels")


def test_head_hidden_size_must_match_base(registry: AdapterRegistry, classifier: Path) -> None:
    _edit_tensors(classifier, lambda t: t.__setitem__(_first(t, "score"), torch.zeros(3, 32)))
    seal(classifier)
    refused(registry, classifier, AdapterIncompatibleError, "hidden size 32, .* has 64")


def test_head_with_nan_is_refused(registry: AdapterRegistry, classifier: Path) -> None:
    _edit_tensors(classifier, lambda t: t.__setitem__(_first(t, "score"),
                                                      torch.full((3, 64), math.nan)))
    seal(classifier)
    refused(registry, classifier, AdapterValidationError, "head contains NaN or Inf")


def test_too_many_labels(tmp_path: Path, base_fingerprint: BaseModelFingerprint,
                         classifier: Path) -> None:
    registry = AdapterRegistry(FileSystemStore(tmp_path / "s"), base_fingerprint,
                               ValidationLimits(max_labels=2), tmp_path / "c")
    refused(registry, classifier, PayloadTooLargeError, "3 labels, more than the limit of 2")


# --- plain PEFT folders (no loraswap.json) ------------------------------------------------

def test_plain_peft_folder_needs_manifest_defaults(
    registry: AdapterRegistry, make_adapter: Callable[..., Path],
    base_fingerprint: BaseModelFingerprint,
) -> None:
    folder = make_adapter("plain")
    refused(registry, folder, AdapterValidationError, "missing loraswap.json")
    version = registry.register("acme", "chat", folder, manifest_defaults=ManifestDefaults(
        metrics={"eval_loss": 1.5}))
    manifest = version.manifest
    assert manifest.task is TaskKind.CAUSAL_LM and manifest.metrics == {"eval_loss": 1.5}
    assert manifest.base_model.weights_sha256 == base_fingerprint.weights_sha256
    assert (manifest.lora.r, sorted(manifest.lora.targets)) == (4, ["q_proj", "v_proj"])
    assert not (folder / MANIFEST_FILE).exists()  # the caller's folder is left alone


def test_plain_classifier_needs_labels(registry: AdapterRegistry, classifier: Path) -> None:
    (classifier / MANIFEST_FILE).unlink()
    refused(registry, classifier, AdapterValidationError,
            "task seq-cls needs a non-empty labels list", manifest_defaults=ManifestDefaults())
    version = registry.register("acme", "sentiment", classifier,
                                manifest_defaults=ManifestDefaults(labels=("neg", "mid", "pos")))
    assert version.manifest.labels == ["neg", "mid", "pos"]


def test_plain_folder_task_must_match_peft(registry: AdapterRegistry,
                                           make_adapter: Callable[..., Path]) -> None:
    refused(registry, make_adapter("plain"), AdapterValidationError, "task_type 'CAUSAL_LM'",
            manifest_defaults=ManifestDefaults(task=TaskKind.SEQ_CLS, labels=("a", "b")))


def test_validate_package_alone_writes_nothing(build_package: PackageBuilder,
                                               base_fingerprint: BaseModelFingerprint) -> None:
    folder = build_package()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    manifest = validate_package(folder, base_fingerprint, ValidationLimits())
    assert manifest.version is None
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
