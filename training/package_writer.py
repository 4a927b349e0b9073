"""Writing the trained adapter as a loraswap package (see ``adapters/package.py``)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from loraswap.adapters.lora_format import CONFIG_FILE, WEIGHTS_FILE
from loraswap.adapters.package import (
    MANIFEST_FILE,
    PACKAGE_FILES,
    PROFILE_FILE,
    AdapterManifest,
    AttentionMode,
    BaseModelRef,
    LoraSummary,
    TaskKind,
    TextSplit,
    package_file_digests,
    write_manifest,
)
from loraswap.base_model.loading import BaseModelInfo
from loraswap.core.errors import ConfigurationError
from loraswap.training.config import TrainConfig


def prepare_output(folder: Path) -> None:
    """Create ``folder``; refuse one holding anything but an earlier package."""
    if folder.exists():
        if not folder.is_dir():
            raise ConfigurationError(f"output {folder} exists and is not a folder")
        foreign = [p.name for p in folder.iterdir()
                   if p.name not in (*PACKAGE_FILES, MANIFEST_FILE)]
        if foreign:
            raise ConfigurationError(
                f"output folder {folder} holds other files ({', '.join(sorted(foreign)[:5])}); "
                "choose an empty or new folder"
            )
    folder.mkdir(parents=True, exist_ok=True)


def save_adapter(peft_model: Any, folder: Path) -> None:
    """PEFT ``save_pretrained`` (safetensors), keeping only the two adapter files.

    PEFT also writes a README model card, which is not part of the package format.
    """
    with tempfile.TemporaryDirectory(prefix="loraswap-save-") as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            source = Path(tmp) / name
            if not source.is_file():
                raise ConfigurationError(f"PEFT did not write {name}; cannot package")
            shutil.copyfile(source, folder / name)
    config_path = folder / CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("modules_to_save"):
        # PEFT lists its default names (classifier, score) next to ours; keep what exists.
        config["modules_to_save"] = ["score"]
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def write_package(folder: Path, peft_model: Any, cfg: TrainConfig, base: BaseModelInfo,
                  labels: list[str] | None, metrics: dict[str, float],
                  training: dict[str, Any], profile: dict[str, Any]) -> AdapterManifest:
    """Adapter files, ``profile.json`` and, last, ``loraswap.json`` with their digests."""
    prepare_output(folder)
    save_adapter(peft_model, folder)
    (folder / PROFILE_FILE).write_text(json.dumps(profile, separators=(",", ":")) + "\n",
                                       encoding="utf-8")
    assert cfg.lora.r is not None and cfg.lora.alpha is not None
    manifest = AdapterManifest(
        tenant=cfg.tenant,
        name=cfg.name,
        task=cfg.task,
        labels=labels,
        attention=cfg.attention or AttentionMode.CAUSAL,
        # encode_words splits corpus words as the service splits raw text.
        text_split=TextSplit.WORDS if cfg.task is TaskKind.TOKEN_CLS else TextSplit.NONE,
        base_model=BaseModelRef(name=base.name, weights_sha256=base.weights_sha256),
        lora=LoraSummary(r=cfg.lora.r, alpha=cfg.lora.alpha, targets=list(cfg.lora.targets),
                         dropout=cfg.lora.dropout),
        metrics={k: float(v) for k, v in metrics.items()},
        training=training,
        files=package_file_digests(folder),
    )
    write_manifest(folder, manifest)
    return manifest
