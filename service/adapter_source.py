"""Where servable adapters come from: the registry (``tenant/name``) and a dev folder.

Resolution is the first tier of the request path: it turns the name a request uses into
an immutable :class:`AdapterKey` (name + version) and a way to read that version's weights.
A request keeps the key it resolved, so promoting a new version never changes the weights
of a request already running; the next request resolves the new active version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from adapters.errors import AdapterNotFoundError, AdapterValidationError, InvalidRequestError
from adapters.lora_format import CONFIG_FILE, WEIGHTS_FILE, LoraAdapterWeights, read_lora_adapter
from adapters.package import (
    MANIFEST_FILE,
    SAFE_NAME,
    SAFE_NAME_RULE,
    AdapterManifest,
    AttentionMode,
    TaskKind,
    TextSplit,
    read_manifest,
)
from adapters.registry import AdapterRegistry
from service.engine.residency import AdapterKey

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ResolvedAdapter:
    """A servable adapter version and how to read its weights."""

    key: AdapterKey
    read: Callable[[], LoraAdapterWeights]
    task: TaskKind = TaskKind.CAUSAL_LM
    # Class names in head order (seq-cls / token-cls); None: "LABEL_<i>".
    labels: tuple[str, ...] | None = None
    attention: AttentionMode = AttentionMode.CAUSAL
    text_split: TextSplit = TextSplit.NONE


@dataclass(frozen=True)
class AdapterListing:
    """One servable adapter as a caller sees it in a list."""

    name: str
    task: TaskKind
    version: str | None = None


class AdapterResolver(Protocol):
    """Looks adapters up by the name a request uses.

    ``resolve`` may read the store or copy files: call it off the event loop.
    """

    def resolve(self, name: str) -> ResolvedAdapter:
        """The adapter called ``name``; :class:`AdapterNotFoundError` if there is none."""
        ...

    def listing(self, owner: str | None) -> list[AdapterListing]:
        """Adapters visible to tenant ``owner`` (None: development adapters only)."""
        ...

    def names(self) -> list[str]:
        """Development adapter names (visible to every caller)."""
        ...


def check_adapter_name(name: str) -> None:
    """Refuse names that could escape a folder or break labels (400 naming the rule)."""
    if not ADAPTER_NAME.fullmatch(name):
        raise InvalidRequestError(
            f"adapter name {name!r} is invalid: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 128 characters"
        )


@dataclass(frozen=True)
class _Traits:
    task: TaskKind = TaskKind.CAUSAL_LM
    labels: tuple[str, ...] | None = None
    attention: AttentionMode = AttentionMode.CAUSAL
    text_split: TextSplit = TextSplit.NONE

    @classmethod
    def of_manifest(cls, manifest: AdapterManifest) -> _Traits:
        return cls(manifest.task, tuple(manifest.labels) if manifest.labels else None,
                   manifest.attention, manifest.text_split)

    def resolved(self, key: AdapterKey, read: Callable[[], LoraAdapterWeights],
                 ) -> ResolvedAdapter:
        return ResolvedAdapter(key, read, task=self.task, labels=self.labels,
                               attention=self.attention, text_split=self.text_split)


def _traits_of(folder: Path) -> _Traits:
    """Task, labels, attention and text split: from ``loraswap.json`` when present, else
    PEFT's ``task_type`` (no labels, causal attention, text as sent)."""
    if (folder / MANIFEST_FILE).is_file():
        return _Traits.of_manifest(read_manifest(folder))
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _Traits()  # read() reports the broken config
    task_type = raw.get("task_type") if isinstance(raw, dict) else None
    return _Traits(TaskKind.from_peft_task_type(task_type) or TaskKind.CAUSAL_LM)


class LocalAdapterDirectory:
    """``LORASWAP_ADAPTER_DIR``: one PEFT adapter per sub-folder, read-only.

    The version of an adapter is derived from its weights file's size and modification
    time, so replacing the files on disk serves the new weights to new requests.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def resolve(self, name: str) -> ResolvedAdapter:
        """The adapter in sub-folder ``name``."""
        check_adapter_name(name)
        if self.root is None:
            raise AdapterNotFoundError(name)
        folder = self.root / name
        weights = folder / WEIGHTS_FILE
        if not (folder / CONFIG_FILE).is_file():
            raise AdapterNotFoundError(name)
        try:
            stat = weights.stat()
        except FileNotFoundError:
            stat = (folder / CONFIG_FILE).stat()  # read() will name the missing file
        version = f"{stat.st_size:x}-{stat.st_mtime_ns:x}"
        return _traits_of(folder).resolved(AdapterKey(name, version),
                                           lambda: read_lora_adapter(folder, name))

    def listing(self, owner: str | None) -> list[AdapterListing]:
        """Every development adapter with its task (the same for every caller)."""
        found = []
        for name in self.names():  # empty when there is no root
            assert self.root is not None
            try:
                task = _traits_of(self.root / name).task
            except AdapterValidationError:
                continue  # a broken manifest: resolve() reports it when asked for
            found.append(AdapterListing(name, task))
        return found

    def names(self) -> list[str]:
        """Sub-folders that hold an adapter config."""
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if (p / CONFIG_FILE).is_file() and ADAPTER_NAME.fullmatch(p.name)
        )


def split_registry_name(name: str) -> tuple[str, str] | None:
    """``("tenant", "name")`` for a ``tenant/name`` reference; None for a plain name."""
    owner, slash, adapter = name.partition("/")
    if not slash:
        return None
    if not (SAFE_NAME.fullmatch(owner) and SAFE_NAME.fullmatch(adapter)):
        raise InvalidRequestError(
            f"adapter name {name!r} is invalid: registered adapters are 'tenant/name', each "
            f"part: {SAFE_NAME_RULE}")
    return owner, adapter


def check_adapter_ref(name: str) -> None:
    """400 naming the rule for a name that no adapter (registered or dev) can have."""
    if "/" in name:
        split_registry_name(name)
    else:
        check_adapter_name(name)


class RegistryAdapterSource:
    """Registry adapters (``tenant/name``, active version) beside the dev folder.

    The registry caches each adapter's active version for ``registry_refresh_seconds`` and
    reads the store at once on a miss, so a version promoted on another replica is served
    here within that time. Resolving copies the version's files into the local cache (sha256
    verified) so that the engine thread only ever reads local files.
    """

    def __init__(self, registry: AdapterRegistry, local: LocalAdapterDirectory) -> None:
        self.registry = registry
        self.local = local

    def resolve(self, name: str) -> ResolvedAdapter:
        """The active version of ``tenant/name``, or the dev folder's ``name``."""
        parts = split_registry_name(name)
        if parts is None:
            return self.local.resolve(name)
        version = self.registry.active(*parts)
        folder = self.registry.local_folder(version.tenant, version.name, version.version)
        return _Traits.of_manifest(version.manifest).resolved(
            AdapterKey(name, str(version.version)), lambda: read_lora_adapter(folder, name))

    def listing(self, owner: str | None) -> list[AdapterListing]:
        """Dev adapters, then ``owner``'s registered adapters that have an active version."""
        found = self.local.listing(None)
        if owner is None:
            return found
        for record in self.registry.list(owner):
            active = next((v for v in record.versions if v.version == record.active), None)
            if active is not None:
                found.append(AdapterListing(f"{record.tenant}/{record.name}",
                                            active.manifest.task, str(active.version)))
        return found

    def names(self) -> list[str]:
        """Development adapter names."""
        return self.local.names()
