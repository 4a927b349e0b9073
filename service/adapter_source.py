"""Where servable adapters come from: the registry (``tenant/name``) and a dev folder.

Resolution is the first tier of the request path: it turns the name a request uses into
a :class:`ServingTarget`: an immutable :class:`AdapterVersionRef` (adapter + version), the adapter's
traits and a way to read that version's weights.
A request keeps the key it resolved, so promoting a new version never changes the weights
of a request already running; the next request resolves the new active version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from loraswap.adapters.lora_format import CONFIG_FILE, WEIGHTS_FILE, read_lora_adapter
from loraswap.adapters.package import MANIFEST_FILE, read_manifest
from loraswap.adapters.registry import AdapterRegistry
from loraswap.core.errors import (
    AdapterNotFoundError,
    AdapterValidationError,
)
from loraswap.core.identity import DEV_NAME, AdapterRef, Version
from loraswap.service.targets import AdapterTraits, ServingTarget


class AdapterResolver(Protocol):
    """Looks adapters up by the name a request uses.

    ``resolve`` may read the store or copy files: call it off the event loop.
    """

    def resolve(self, name: str) -> ServingTarget:
        """The adapter called ``name``; :class:`AdapterNotFoundError` if there is none."""
        ...

    def listing(self, owner: str | None) -> list[ServingTarget]:
        """Adapters visible to tenant ``owner`` (None: development adapters only)."""
        ...

    def names(self) -> list[str]:
        """Development adapter names (visible to every caller)."""
        ...


def _traits_of(folder: Path) -> AdapterTraits:
    """From ``loraswap.json`` when present, else from PEFT's ``adapter_config.json``."""
    if (folder / MANIFEST_FILE).is_file():
        return AdapterTraits.of_manifest(read_manifest(folder))
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return AdapterTraits()  # read() reports the broken config
    return AdapterTraits.of_peft_config(raw)


class LocalAdapterDirectory:
    """``LORASWAP_ADAPTER_DIR``: one PEFT adapter per sub-folder, read-only.

    The version of an adapter is derived from its weights file's size and modification
    time, so replacing the files on disk serves the new weights to new requests.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def resolve(self, name: str) -> ServingTarget:
        """The adapter in sub-folder ``name``."""
        return self.resolve_ref(AdapterRef(None, name))

    def resolve_ref(self, ref: AdapterRef) -> ServingTarget:
        """The development adapter ``ref`` (a sub-folder of the root)."""
        name = ref.name
        if self.root is None or ref.is_registered:
            raise AdapterNotFoundError(str(ref))
        folder = self.root / name
        weights = folder / WEIGHTS_FILE
        if not (folder / CONFIG_FILE).is_file():
            raise AdapterNotFoundError(name)
        try:
            stat = weights.stat()
        except FileNotFoundError:
            stat = (folder / CONFIG_FILE).stat()  # read() will name the missing file
        version = Version.tag(f"{stat.st_size:x}-{stat.st_mtime_ns:x}")
        return ServingTarget(ref.at(version), _traits_of(folder),
                             lambda: read_lora_adapter(folder, name))

    def listing(self, owner: str | None) -> list[ServingTarget]:
        """Every development adapter (the same for every caller)."""
        found = []
        for name in self.names():  # empty when there is no root
            try:
                found.append(self.resolve(name))
            except (AdapterValidationError, AdapterNotFoundError, OSError):
                continue  # broken or just removed: resolve() reports it when asked for
        return found

    def names(self) -> list[str]:
        """Sub-folders that hold an adapter config."""
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if (p / CONFIG_FILE).is_file() and DEV_NAME.fullmatch(p.name)
        )


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

    def resolve(self, name: str) -> ServingTarget:
        """The active version of ``tenant/name``, or the dev folder's ``name``."""
        ref = AdapterRef.parse(name)
        if ref.tenant is None:
            return self.local.resolve_ref(ref)
        version = self.registry.active(ref.tenant, ref.name)
        folder = self.registry.local_folder(version.tenant, version.name, version.version)
        return ServingTarget(version.key, AdapterTraits.of_manifest(version.manifest),
                             lambda: read_lora_adapter(folder, name))

    def listing(self, owner: str | None) -> list[ServingTarget]:
        """Dev adapters, then ``owner``'s registered adapters that have an active version."""
        found = self.local.listing(None)
        if owner is None:
            return found
        for record in self.registry.list(owner):
            active = next((v for v in record.versions if v.version == record.active), None)
            if active is not None:
                found.append(ServingTarget(active.key, AdapterTraits.of_manifest(active.manifest)))
        return found

    def names(self) -> list[str]:
        """Development adapter names."""
        return self.local.names()
