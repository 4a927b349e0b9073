"""The loraswap adapter package: a PEFT LoRA adapter plus ``loraswap.json``.

A package is a folder holding ``adapter_config.json``, ``adapter_model.safetensors``,
optionally ``profile.json`` (the training-data profile drift monitoring compares live
traffic against) and ``loraswap.json`` (:class:`AdapterManifest`): who owns the adapter,
what task it answers, which base model it was trained on, and the sha256 of every other
file. The format is documented in ``docs/adapter-format.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loraswap.adapters.lora_format import CONFIG_FILE, WEIGHTS_FILE
from loraswap.core.errors import AdapterValidationError, validated
from loraswap.core.identity import SAFE_NAME, SAFE_NAME_RULE

MANIFEST_FILE = "loraswap.json"
PROFILE_FILE = "profile.json"
FORMAT_VERSION = 1
# Files a package may contain besides the manifest; anything else is refused.
PACKAGE_FILES = (CONFIG_FILE, WEIGHTS_FILE, PROFILE_FILE)

def check_safe_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe tenant/adapter name, else a validation error."""
    if not SAFE_NAME.fullmatch(value):
        raise AdapterValidationError(f"{kind} name {value!r} is invalid: {SAFE_NAME_RULE}")
    return value


class TaskKind(StrEnum):
    """What an adapter answers."""

    CAUSAL_LM = "causal-lm"
    SEQ_CLS = "seq-cls"
    TOKEN_CLS = "token-cls"

    @property
    def peft_task_type(self) -> str:
        """The PEFT ``task_type`` an adapter of this kind is saved with."""
        return {"causal-lm": "CAUSAL_LM", "seq-cls": "SEQ_CLS", "token-cls": "TOKEN_CLS"}[
            self.value
        ]

    @classmethod
    def from_peft_task_type(cls, task_type: object) -> TaskKind | None:
        """The kind of PEFT's ``task_type`` (absent or empty: causal-lm); None if unsupported.

        The one mapping between the two names: validation and serving both use it.
        """
        if task_type is None or task_type == "":
            return cls.CAUSAL_LM
        return next((kind for kind in cls if kind.peft_task_type == task_type), None)

    @property
    def has_labels(self) -> bool:
        """Whether adapters of this kind carry a label list and a classification head."""
        return self is not TaskKind.CAUSAL_LM


class AttentionMode(StrEnum):
    """How the adapter's tokens attend to each other in the shared decoder.

    ``causal`` is the base model's own mask. ``bidirectional`` lets every token of the
    input see every other one (padding excluded): a token-cls adapter then labels a word
    knowing the words after it, as an encoder does. Generation needs ``causal``.
    """

    CAUSAL = "causal"
    BIDIRECTIONAL = "bidirectional"


class TextSplit(StrEnum):
    """How a token-cls adapter's input text is rendered before tokenization.

    ``none``: tokenized as sent. ``words``: split into words and punctuation marks and
    joined with single spaces (:mod:`loraswap.adapters.words`), as the adapter's training
    corpus was; entity offsets still refer to the text as sent.
    """

    NONE = "none"
    WORDS = "words"


class BaseModelRef(BaseModel):
    """The base model an adapter was trained on: its name and weights fingerprint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class LoraSummary(BaseModel):
    """Rank, alpha and target modules, as in the PEFT config (repeated for listing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(ge=1)
    alpha: float = Field(gt=0)
    targets: list[str] = Field(min_length=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class AdapterManifest(BaseModel):
    """``loraswap.json``: validated on construction; errors name the bad field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = Field(default=FORMAT_VERSION)
    tenant: str | None = Field(default=None, description="Owner; set by the registry.")
    name: str | None = Field(default=None, description="Adapter name; set by the registry.")
    version: int | None = Field(default=None, ge=1, description="Set by the registry.")
    task: TaskKind
    labels: list[str] | None = Field(default=None, description="Class names, in head order.")
    attention: AttentionMode = Field(
        default=AttentionMode.CAUSAL, description="Attention mask the adapter was trained with.")
    text_split: TextSplit = Field(
        default=TextSplit.NONE, description="How token-cls input text is split into words.")
    base_model: BaseModelRef
    lora: LoraSummary
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict, description="How it was trained.")
    files: dict[str, str] = Field(description="sha256 of every other file in the package.")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    inferred: dict[str, str] | None = Field(
        default=None, description="For a plain PEFT folder: how each field was decided "
                                  "(field -> origin); absent for a package with a manifest.")

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != FORMAT_VERSION:
            raise ValueError(f"format_version {value} is not supported (expected 1)")
        return value

    @field_validator("tenant", "name")
    @classmethod
    def _safe_names(cls, value: str | None) -> str | None:
        if value is not None and not SAFE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a safe name: {SAFE_NAME_RULE}")
        return value

    @field_validator("files")
    @classmethod
    def _known_files(cls, value: dict[str, str]) -> dict[str, str]:
        for file_name, digest in value.items():
            if file_name not in PACKAGE_FILES:
                raise ValueError(f"file {file_name!r} is not part of the package format")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"sha256 of {file_name} is not 64 hex digits")
        for required in (CONFIG_FILE, WEIGHTS_FILE):
            if required not in value:
                raise ValueError(f"files must list {required}")
        return value

    @model_validator(mode="after")
    def _labels_match_task(self) -> AdapterManifest:
        if self.task.has_labels:
            if not self.labels:
                raise ValueError(f"task {self.task} needs a non-empty labels list")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels must be unique")
        elif self.labels:
            raise ValueError("a causal-lm adapter has no labels")
        if self.attention is AttentionMode.BIDIRECTIONAL and not self.task.has_labels:
            raise ValueError("attention 'bidirectional' is for seq-cls and token-cls adapters; "
                             "a causal-lm adapter generates and needs 'causal'")
        if self.text_split is not TextSplit.NONE and self.task is not TaskKind.TOKEN_CLS:
            raise ValueError(f"text_split {self.text_split.value!r} is for token-cls "
                             f"adapters; a {self.task} adapter reads its text as sent")
        return self

    def to_json(self) -> str:
        """Canonical JSON text of the manifest."""
        # ``inferred`` is left out when absent, so manifests of ordinary packages stay
        # readable by replicas that predate the field.
        exclude = {"inferred"} if self.inferred is None else None
        return self.model_dump_json(indent=2, exclude_none=False, exclude=exclude) + "\n"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_file_digests(folder: Path) -> dict[str, str]:
    """sha256 of each package file present in ``folder`` (manifest excluded)."""
    return {name: sha256_file(folder / name) for name in PACKAGE_FILES if (folder / name).is_file()}


def parse_manifest(text: str | bytes, source: str = MANIFEST_FILE) -> AdapterManifest:
    """Parse manifest JSON; a validation error names the file and the bad field."""
    try:
        raw = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterValidationError(f"{source} is not valid JSON: {exc}") from exc
    return validated(AdapterManifest, raw, root="manifest", error=AdapterValidationError,
                     prefix=f"{source} is invalid")


def read_manifest(folder: Path) -> AdapterManifest:
    """The manifest of the package in ``folder``."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise AdapterValidationError(f"{folder.name}: missing {MANIFEST_FILE}")
    return parse_manifest(path.read_bytes(), f"{folder.name}/{MANIFEST_FILE}")


def write_manifest(folder: Path, manifest: AdapterManifest) -> Path:
    """Write ``loraswap.json`` atomically (temporary file, then rename)."""
    path = folder / MANIFEST_FILE
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    tmp.replace(path)
    return path


def build_manifest(folder: Path, *, task: TaskKind, base_model: BaseModelRef,
                   labels: list[str] | None = None, metrics: dict[str, float] | None = None,
                   training: dict[str, Any] | None = None, tenant: str | None = None,
                   name: str | None = None,
                   attention: AttentionMode = AttentionMode.CAUSAL,
                   text_split: TextSplit = TextSplit.NONE) -> AdapterManifest:
    """A manifest for the PEFT adapter in ``folder`` (LoRA summary from its config, file
    digests from its files); write it with :func:`write_manifest`."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterValidationError(f"{folder.name}: {CONFIG_FILE} is unreadable: {exc}") from exc
    targets = config.get("target_modules") or []
    lora = LoraSummary(
        r=config.get("r", 0), alpha=config.get("lora_alpha", 0),
        targets=[targets] if isinstance(targets, str) else sorted(targets),
        dropout=config.get("lora_dropout") or 0.0,
    )
    return AdapterManifest(
        tenant=tenant, name=name, task=task, labels=labels, attention=attention,
        text_split=text_split, base_model=base_model, lora=lora,
        metrics=metrics or {}, training=training or {}, files=package_file_digests(folder),
    )
