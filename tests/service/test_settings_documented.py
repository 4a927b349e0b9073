"""Every LORASWAP_* setting is in README's configuration table, and nothing else is."""

from __future__ import annotations

import re
from pathlib import Path

from loraswap.service.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_configuration_table_lists_exactly_the_settings() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Configuration"):text.index("## How it works")]
    documented = set(re.findall(r"^\| `(LORASWAP_[A-Z_]+)` \|", table, flags=re.MULTILINE))
    expected = {f"LORASWAP_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_settings_come_from_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LORASWAP_MAX_LORAS", "3")
    monkeypatch.setenv("LORASWAP_QUANTIZATION", "fp32")
    settings = Settings()
    assert settings.max_loras == 3
    assert settings.quantization == "fp32"
