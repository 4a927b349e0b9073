"""Debian's prometheus / alertmanager binaries for tests: installed with apt-get if missing.

``scripts/test-tools.sh`` (run by ``make test``) installs them, or without root unpacks them
into ``.venv-tools/debian/root``, which is searched too. A test skips, loudly, only when the
package truly cannot be had (no apt-get, no reachable mirror), and says what failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

PACKAGES = {"promtool": "prometheus", "prometheus": "prometheus",
            "alertmanager": "prometheus-alertmanager",
            "prometheus-alertmanager": "prometheus-alertmanager"}


# Where scripts/test-tools.sh unpacks the packages when it is not run as root.
UNPACKED_BIN = Path(__file__).resolve().parents[2] / ".venv-tools/debian/root/usr/bin"


def _which(binary: str) -> str | None:
    return shutil.which(binary) or shutil.which(binary, path=str(UNPACKED_BIN))


def ensure_binary(binary: str) -> str:
    """The path of ``binary``, installing its Debian package first when it is missing."""
    found = _which(binary)
    if found:
        return found
    package = PACKAGES[binary]
    apt = shutil.which("apt-get")
    problem = None
    if apt is None:
        problem = "apt-get is not available"
    elif os.geteuid() != 0:
        problem = "not root, and scripts/test-tools.sh did not unpack it"
    else:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in ([apt, "update", "-q"],
                        [apt, "install", "-y", "-q", "--no-install-recommends", package]):
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=600, check=False)
            if done.returncode != 0 and command[1] == "install":
                problem = f"`{' '.join(command)}` failed: {done.stderr[-500:]}"
    found = _which(binary)
    if found:
        return found
    message = (f"SKIPPED LOUDLY: {binary} (Debian package {package}) is missing and could "
               f"not be installed: {problem or 'installed, but not on PATH'}")
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)
