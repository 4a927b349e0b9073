"""Plain PEFT folders written by PEFT itself: registered with an inferred manifest, or
refused with an error that names the option, leaving the store unchanged."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from peft import IA3Config, LoHaConfig, LoKrConfig, PrefixTuningConfig

from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.adapters.package import TaskKind
from loraswap.adapters.peft_config import base_name_key
from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import FileSystemStore
from loraswap.adapters.validation import ManifestDefaults, ValidationLimits
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import AdapterIncompatibleError, AdapterValidationError
from tests.adapters.conftest import PackageBuilder, refused
from tests.peft_adapters import edit_config, lora_config, save_peft_adapter

PLAIN = ManifestDefaults()


@pytest.fixture
def registry(tmp_path: Path, base_fingerprint: BaseModelFingerprint) -> AdapterRegistry:
    return AdapterRegistry(FileSystemStore(tmp_path / "store"), base_fingerprint,
                           ValidationLimits(), tmp_path / "cache")


@pytest.fixture
def peft_folder(tiny_base_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``peft_folder(config, num_labels=None)`` -> a folder PEFT saved."""
    counter = iter(range(1000))

    def factory(config: object, *, num_labels: int | None = None) -> Path:
        folder = tmp_path / "peft" / f"adapter-{next(counter)}"
        return save_peft_adapter(tiny_base_dir, folder, config,  # type: ignore[arg-type]
                                 num_labels=num_labels)

    return factory


def test_causal_lm_folder_registers_and_says_what_was_inferred(
    registry: AdapterRegistry, peft_folder: Callable[..., Path],
    base_fingerprint: BaseModelFingerprint,
) -> None:
    version = registry.register("acme", "chat", peft_folder(lora_config()),
                                manifest_defaults=PLAIN)
    manifest = version.manifest
    assert manifest.task is TaskKind.CAUSAL_LM and manifest.labels is None
    assert manifest.base_model.weights_sha256 == base_fingerprint.weights_sha256
    assert (manifest.lora.r, manifest.lora.alpha, manifest.lora.dropout) == (4, 8.0, 0.05)
    inferred = manifest.inferred or {}
    assert inferred["task"] == "causal-lm: from adapter_config.json task_type 'CAUSAL_LM'"
    assert "base_model_name_or_path" in inferred["base_model"]
    assert "names it" in inferred["base_model"]
    assert "scaling lora_alpha/r" in inferred["lora"]
    # The stored manifest keeps it, so the admin listing shows it later too.
    assert registry.get("acme", "chat").versions[0].manifest.inferred == inferred


def test_seq_cls_folder_with_its_head_needs_labels(
    registry: AdapterRegistry, peft_folder: Callable[..., Path],
) -> None:
    folder = peft_folder(lora_config("SEQ_CLS"), num_labels=3)
    refused(registry, folder, AdapterValidationError,
            "task seq-cls needs a non-empty labels list.*--labels", manifest_defaults=PLAIN)
    refused(registry, folder, AdapterValidationError, "head has 3 outputs.*lists 2 labels",
            manifest_defaults=ManifestDefaults(labels=("neg", "pos")))
    version = registry.register("acme", "sentiment", folder, manifest_defaults=ManifestDefaults(
        labels=("neg", "mid", "pos")))
    assert version.manifest.task is TaskKind.SEQ_CLS
    assert version.manifest.labels == ["neg", "mid", "pos"]
    assert (version.manifest.inferred or {})["labels"] == "given by the caller, in head order"


def test_rslora_folder_registers_with_rslora_scaling(
    registry: AdapterRegistry, peft_folder: Callable[..., Path],
) -> None:
    folder = peft_folder(lora_config(rank=16, use_rslora=True))
    version = registry.register("acme", "chat", folder, manifest_defaults=PLAIN)
    assert "use_rslora: scaling lora_alpha/sqrt(r)" in (version.manifest.inferred or {})["lora"]
    assert read_lora_adapter(folder).config.scaling == pytest.approx(32 / math.sqrt(16))


def test_a_trainer_name_of_the_same_base_is_accepted(
    registry: AdapterRegistry, peft_folder: Callable[..., Path],
    base_fingerprint: BaseModelFingerprint,
) -> None:
    folder = edit_config(peft_folder(lora_config()),
                         base_model_name_or_path=f"unsloth/{base_fingerprint.name}-bnb-4bit")
    assert registry.register("acme", "chat", folder, manifest_defaults=PLAIN).version == 1


def test_another_base_name_is_refused_unless_ignored(
    registry: AdapterRegistry, peft_folder: Callable[..., Path],
) -> None:
    folder = edit_config(peft_folder(lora_config()),
                         base_model_name_or_path="HuggingFaceTB/SmolLM2-360M")
    refused(registry, folder, AdapterIncompatibleError,
            "base_model_name_or_path 'HuggingFaceTB/SmolLM2-360M' is not the served base",
            manifest_defaults=PLAIN)
    version = registry.register("acme", "chat", folder,
                                manifest_defaults=ManifestDefaults(ignore_base_name=True))
    assert "accepted on shapes because ignore_base_name" in (
        version.manifest.inferred or {})["base_model"]


def test_options_that_are_off_are_accepted_even_when_unknown(
    registry: AdapterRegistry, peft_folder: Callable[..., Path],
) -> None:
    folder = edit_config(peft_folder(lora_config()), future_option=None, new_flag=False,
                         rank_pattern={}, use_dora=False, base_model_name_or_path=None)
    version = registry.register("acme", "chat", folder, manifest_defaults=PLAIN)
    assert "names no base_model_name_or_path" in (version.manifest.inferred or {})["base_model"]


# (id, adapter_config options or another PEFT config, config.json edits, error text)
REFUSED_SHAPES: list[tuple[str, object, dict[str, object], str]] = [
    ("dora", lora_config(use_dora=True), {}, r"use_dora=True is not supported: DoRA"),
    ("lm_head saved", lora_config(modules_to_save=["lm_head"]), {},
     r"modules_to_save=\['lm_head'\].*lm_head would replace base-model weights"),
    ("rank pattern", lora_config(rank_pattern={"v_proj": 8}), {}, r"rank_pattern=\{'v_proj': 8\}"),
    ("alpha pattern", lora_config(alpha_pattern={"q_proj": 32}), {}, "alpha_pattern="),
    ("layer replication", lora_config(layer_replication=[[0, 2], [1, 2]]), {},
     "layer_replication=.*changes the base model's layer stack"),
    ("lora bias", lora_config(lora_bias=True), {}, "lora_bias=True"),
    ("ia3", IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "down_proj"],
                      feedforward_modules=["down_proj"]), {}, "peft_type='IA3'"),
    ("loha", LoHaConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj"]), {},
     "peft_type='LOHA'"),
    ("lokr", LoKrConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj"]), {},
     "peft_type='LOKR'"),
    ("prefix tuning", PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), {},
     "peft_type='PREFIX_TUNING'"),
    ("unknown option", lora_config(), {"future_option": {"mode": "x"}},
     "future_option=.*unknown to loraswap"),
    ("pissa init", lora_config(), {"init_lora_weights": "pissa"},
     "init_lora_weights='pissa'.*rewrites the base weights"),
    ("unsupported task", lora_config(), {"task_type": "SEQ_2_SEQ_LM"},
     "task_type 'SEQ_2_SEQ_LM' is not supported"),
]


@pytest.mark.parametrize(("shape", "config", "edits", "match"), REFUSED_SHAPES,
                         ids=[shape[0] for shape in REFUSED_SHAPES])
def test_unsupported_peft_shapes_are_refused_naming_the_option(
    registry: AdapterRegistry, peft_folder: Callable[..., Path], shape: str, config: object,
    edits: dict[str, object], match: str,
) -> None:
    folder = edit_config(peft_folder(config), **edits)
    refused(registry, folder, AdapterIncompatibleError, match, manifest_defaults=PLAIN)


def test_the_reader_refuses_them_too(peft_folder: Callable[..., Path]) -> None:
    """A development adapter folder is read without validation: same refusal."""
    folder = peft_folder(lora_config(use_dora=True))
    with pytest.raises(AdapterIncompatibleError, match="use_dora=True"):
        read_lora_adapter(folder)


def test_task_or_labels_given_for_a_package_with_a_manifest_must_agree(
    registry: AdapterRegistry, build_package: PackageBuilder,
) -> None:
    refused(registry, build_package(), AdapterValidationError,
            "task seq-cls was given, but the package's loraswap.json says causal-lm",
            manifest_defaults=ManifestDefaults(task=TaskKind.SEQ_CLS, labels=("a", "b")))
    assert registry.register("acme", "chat", build_package("again"),
                             manifest_defaults=PLAIN).manifest.inferred is None


@pytest.mark.parametrize(("reference", "same"), [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
    ("unsloth/SmolLM2-135M-Instruct-bnb-4bit", True),
    ("unsloth/smollm2-135m-instruct-unsloth-bnb-4bit", True),
    ("/home/me/models/SmolLM2-135M-Instruct/", True),
    ("C:\\models\\SmolLM2-135M-Instruct", True),
    ("HuggingFaceTB/SmolLM2-135M", False),  # the base model, not the instruct one
    ("HuggingFaceTB/SmolLM2-360M-Instruct", False),
])
def test_base_names_compare_by_their_last_segment(reference: str, same: bool) -> None:
    assert (base_name_key(reference) == base_name_key("SmolLM2-135M-Instruct")) is same
