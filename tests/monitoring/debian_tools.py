"""Debian's prometheus / alertmanager binaries for tests: installed with apt-get if missing.

A test skips, loudly, only when the package truly cannot be installed (no apt-get, no
root, no reachable mirror), and says which command failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import pytest

PACKAGES = {"promtool": "prometheus", "prometheus": "prometheus",
            "alertmanager": "prometheus-alertmanager",
            "prometheus-alertmanager": "prometheus-alertmanager"}


def ensure_binary(binary: str) -> str:
    """The path of ``binary``, installing its Debian package first when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    package = PACKAGES[binary]
    apt = shutil.which("apt-get")
    problem = None
    if apt is None:
        problem = "apt-get is not available"
    elif os.geteuid() != 0:
        problem = "not root, cannot apt-get install"
    else:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in ([apt, "update", "-q"],
                        [apt, "install", "-y", "-q", "--no-install-recommends", package]):
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=600, check=False)
            if done.returncode != 0 and command[1] == "install":
                problem = f"`{' '.join(command)}` failed: {done.stderr[-500:]}"
    found = shutil.which(binary)
    if found:
        return found
    message = (f"SKIPPED LOUDLY: {binary} (Debian package {package}) is missing and could "
               f"not be installed: {problem or 'installed, but not on PATH'}")
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)
