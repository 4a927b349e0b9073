"""The environment tests run under, and the one their child processes get."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Variables that change what the code under test does; a developer's shell often has them
# (the README exports LORASWAP_ADMIN_TOKEN): no test may see them unless it sets them.
ISOLATED_ENV_PREFIXES = ("LORASWAP_", "AWS_")


def child_env(extra: dict[str, str], unset: Sequence[str] = ()) -> dict[str, str]:
    """The environment for a child process: ours without ``LORASWAP_*``/``AWS_*`` (also
    when called from a fixture set up before the autouse isolation) and ``unset``, plus
    ``extra``."""
    kept = {k: v for k, v in os.environ.items()
            if not k.startswith(ISOLATED_ENV_PREFIXES) and k not in unset}
    return {**kept, "PYTHONPATH": str(REPO_ROOT), **extra}


# What makes the Hugging Face libraries offline by themselves (and that loraswap sets inside
# its own processes): the network tests unset them, so the product must not rely on a shell
# that exports them.
HUB_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                "HF_HUB_DISABLE_TELEMETRY", "USE_HUB_KERNELS", "HF_HOME", "HF_HUB_CACHE",
                "XDG_CACHE_HOME")


def empty_home(parent: Path) -> dict[str, str]:
    """``HOME`` for a child process as on a new user's machine: an empty folder (no cached
    Hub files, no agent registry, no kernels), with the Hub's cache variables unset (pass
    :data:`HUB_SWITCHES` as ``unset``)."""
    home = parent / "empty-home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home)}
