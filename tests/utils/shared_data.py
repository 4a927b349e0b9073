"""Where the real datasets are: ``../shared/data`` beside the checkout, else the machine's
shared folder (a clean clone in a temporary folder has no sibling ``shared``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.utils.env import REPO_ROOT

CANDIDATES = (REPO_ROOT.parent / "shared" / "data", Path("/work/shared/data"))


def shared_data_dir(*datasets: str) -> Path:
    """The first data folder holding every one of ``datasets``; a loud skip (which
    ``--fail-on-skip`` turns into a failure) when none does."""
    for candidate in CANDIDATES:
        if all((candidate / name).is_dir() for name in datasets):
            return candidate
    pytest.skip(f"SKIPPED LOUDLY: the real datasets {list(datasets)} (../shared/data) "
                "are not here")
