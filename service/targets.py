"""What a request runs on: the base model or one adapter version, resolved once.

A request names its target once (``adapter`` / ``model``); resolution turns that name into a
:class:`ServingTarget` holding an immutable :class:`AdapterVersionRef` (adapter + version) and the
adapter's :class:`AdapterTraits`. Everything after resolution (access, the task's rules,
the engine submission, the answer) reads that one object, so a promotion between two steps
of a request can never mix two versions. The base model is a target like any adapter, with
the reserved name ``base`` and no key, so "no adapter" is not a special case downstream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loraswap.adapters.compatibility import check_head
from loraswap.adapters.lora_format import LoraAdapterWeights
from loraswap.adapters.package import AdapterManifest, AttentionMode, TaskKind, TextSplit
from loraswap.core.errors import AdapterValidationError
from loraswap.core.identity import AdapterVersionRef, Version

BASE_TARGET = "base"
"""The reserved name of the base model (in metrics, logs and the OpenAI ``model`` field)."""

@dataclass(frozen=True)
class AdapterTraits:
    """How an adapter is served: its task, class names, attention and text split."""

    task: TaskKind = TaskKind.CAUSAL_LM
    labels: tuple[str, ...] | None = None  # class names in head order; None: "LABEL_<i>"
    attention: AttentionMode = AttentionMode.CAUSAL
    text_split: TextSplit = TextSplit.NONE

    @classmethod
    def of_manifest(cls, manifest: AdapterManifest) -> AdapterTraits:
        """The traits a package manifest (``loraswap.json``) declares."""
        return cls(manifest.task, tuple(manifest.labels) if manifest.labels else None,
                   manifest.attention, manifest.text_split)

    @classmethod
    def of_peft_config(cls, config: Any) -> AdapterTraits:
        """A plain PEFT folder's traits: the task from ``task_type`` (causal-lm when absent
        or unknown); no labels, causal attention, text as sent."""
        task_type = config.get("task_type") if isinstance(config, dict) else None
        return cls(TaskKind.from_peft_task_type(task_type) or TaskKind.CAUSAL_LM)


@dataclass(frozen=True)
class ServingTarget:
    """The base model or one adapter version; ``weights`` once decoded (:meth:`loaded`)."""

    key: AdapterVersionRef | None = None
    traits: AdapterTraits = AdapterTraits()
    read: Callable[[], LoraAdapterWeights] | None = dataclasses.field(
        default=None, repr=False, compare=False)
    weights: LoraAdapterWeights | None = dataclasses.field(
        default=None, repr=False, compare=False)

    @classmethod
    def base(cls) -> ServingTarget:
        """The base model."""
        return cls()

    @property
    def is_base(self) -> bool:
        """Whether this is the base model (no adapter)."""
        return self.key is None

    @property
    def name(self) -> str:
        """What metrics, logs and the OpenAI ``model`` field call it: the adapter
        (``tenant/name`` or a dev folder name), or ``base``."""
        return BASE_TARGET if self.key is None else str(self.key.ref)

    @property
    def adapter(self) -> str | None:
        """The adapter reference, None for the base model (API answers)."""
        return None if self.key is None else str(self.key.ref)

    @property
    def version(self) -> Version | None:
        """The adapter version served (None for the base)."""
        return self.key.version if self.key else None

    @property
    def task(self) -> TaskKind:
        """What the target does."""
        return self.traits.task

    def loaded(self, weights: LoraAdapterWeights) -> ServingTarget:
        """This target with its decoded weights."""
        return dataclasses.replace(self, weights=weights)

    def class_names(self) -> list[str]:
        """Names of the head's outputs, in order: the adapter's labels, else "LABEL_<i>"
        (422 when the weights have no head or it does not match the labels)."""
        if self.weights is None:
            raise AdapterValidationError(f"{self.name}: its weights are not loaded")
        return check_head(self.weights, self.task, labels=self.traits.labels)
