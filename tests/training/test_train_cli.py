"""`loraswap train` through the CLI, QLoRA refusal without bitsandbytes, and --push."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from loraswap.adapters.package import read_manifest
from loraswap.cli import app
from loraswap.core.errors import QuantizationUnavailableError
from loraswap.training.config import LoraSettings, TrainConfig, build_config
from loraswap.training.runner import run_training

runner = CliRunner()


def test_csv_text_label_trains_without_a_config_file(csv_data: Path, tiny_base_dir: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "sentiment"
    result = runner.invoke(app, [
        "train", "--task", "seq-cls", "--data", str(csv_data), "--output", str(out),
        "--base-model", str(tiny_base_dir), "--max-steps", "3", "--no-progress",
        "--tenant", "acme", "--name", "sentiment",
    ])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    manifest = read_manifest(out)
    assert manifest.labels == ["neg", "pos"]
    assert (manifest.tenant, manifest.name) == ("acme", "sentiment")
    assert "accuracy" in manifest.metrics


def test_config_file_with_flag_override(csv_data: Path, tiny_base_dir: Path,
                                        tmp_path: Path) -> None:
    config = tmp_path / "train.json"
    config.write_text(
        f'{{"task": "seq-cls", "data": "{csv_data}", "output": "{tmp_path / "out"}", '
        f'"base_model": "{tiny_base_dir}", "max_steps": 50, "lora": {{"r": 4}}}}')
    result = runner.invoke(app, ["train", "--config", str(config), "--max-steps", "2",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "out")
    assert manifest.lora.r == 4 and manifest.training["steps"] == 2


def test_missing_label_column_is_reported(csv_data: Path, tiny_base_dir: Path,
                                          tmp_path: Path) -> None:
    result = runner.invoke(app, [
        "train", "--task", "seq-cls", "--data", str(csv_data), "--output",
        str(tmp_path / "o"), "--base-model", str(tiny_base_dir), "--label-column", "intent",
    ])
    assert result.exit_code == 1
    assert "no column 'intent'" in result.output


def test_qlora_without_bitsandbytes_fails_clearly(csv_data: Path, tiny_base_dir: Path,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    cfg = build_config({}, {"task": "seq-cls", "data": csv_data, "output": tmp_path / "q",
                            "base_model": tiny_base_dir, "qlora": True, "progress": False})
    with pytest.raises(QuantizationUnavailableError, match="--qlora needs bitsandbytes"):
        run_training(cfg)
    assert not (tmp_path / "q").exists()  # refused before anything was written or trained

    result = runner.invoke(app, ["train", "--task", "seq-cls", "--data", str(csv_data),
                                 "--output", str(tmp_path / "q"), "--base-model",
                                 str(tiny_base_dir), "--qlora"])
    assert result.exit_code == 1
    assert "--qlora needs bitsandbytes" in result.output
    assert "Refusing to train a non-quantized base" in result.output


def test_push_without_token_stops_before_training(csv_data: Path, tiny_base_dir: Path,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORASWAP_ADMIN_TOKEN", raising=False)
    result = runner.invoke(app, [
        "train", "--task", "seq-cls", "--data", str(csv_data), "--output",
        str(tmp_path / "o"), "--base-model", str(tiny_base_dir), "--push",
        "http://localhost:1", "--tenant", "acme", "--name", "x",
    ])
    assert result.exit_code == 1
    assert "LORASWAP_ADMIN_TOKEN" in result.output
    assert not (tmp_path / "o").exists()


def _shown(value: object) -> str:
    """A default as the help must show it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def test_every_train_config_field_has_a_flag_with_its_default_in_the_help() -> None:
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    options = {opt: param for param in command.params for opt in param.opts}
    fields = [(f"--{name.replace('_', '-')}", field)
              for name, field in TrainConfig.model_fields.items() if name != "lora"]
    fields += [(f"--lora-{name}", field) for name, field in LoraSettings.model_fields.items()]
    fixed = {"--config", "--push", "--admin-token", "--help"}
    generated = {param.opts[0] for param in command.params} - fixed
    assert generated == {flag for flag, _ in fields}  # one flag per field, no other
    for flag, field in fields:
        assert flag in options, f"TrainConfig has {flag[2:]} but `loraswap train` no {flag}"
        help_text = options[flag].help
        assert field.description and field.description in help_text, flag
        if field.is_required():
            assert "Required unless the --config file sets it." in help_text, flag
            continue
        default = field.get_default(call_default_factory=True)
        if default is None:  # what the field becomes is said in words
            assert "Default: " in help_text and "Default: None" not in help_text, flag
        else:
            assert f"Default: {_shown(default)}." in help_text, (flag, help_text)
    # The rendered help a user reads carries the same text.
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    flat = " ".join(result.output.replace("│", " ").split())
    assert "Share of the steps spent warming up. Default: 0.06." in flat
    assert "Peak learning rate. Default: seq-cls 0.0005, token-cls 0.0005, causal-lm 0.0002." \
        in flat


def test_generated_flags_keep_their_short_spellings_and_split_lists(
        csv_data: Path, tmp_path: Path) -> None:
    base = ["train", "--task", "seq-cls", "--data", str(csv_data), "--output",
            str(tmp_path / "o")]
    # Refused by the configuration, before any model is read: the value reached it.
    result = runner.invoke(app, [*base, "--lora-targets", "q_proj, v_proj,bogus"])
    assert result.exit_code == 1 and "unknown LoRA target(s) ['bogus']" in result.output
    result = runner.invoke(app, [*base, "--lr", "0"])
    assert result.exit_code == 1 and "learning_rate" in result.output
    result = runner.invoke(app, [*base, "--format", "xml"])
    assert result.exit_code == 1 and "data_format" in result.output
    assert not (tmp_path / "o").exists()
