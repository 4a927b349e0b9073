"""Fixtures for the adapters tests: pip isolated from this machine's package sources."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def isolated_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pip (run by fetch) see only the index a test names.

    The machine's pip configuration adds local wheel folders and extra indexes; a test
    about an unreachable or fake index must not be rescued by them.
    """
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # pip then reads no config file
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
