"""Real ``loraswap serve`` processes on loopback, as an operator starts them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.service.conftest import free_port


class ServiceProcess:
    """One `loraswap serve` child process; output goes to a log file for failures."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {**os.environ, **env, "LORASWAP_PORT": str(self.port)}
        self._log_path = Path(tempfile.mkstemp(prefix="serve-", suffix=".log", dir=log_dir)[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120, wait_for: str = "/readyz") -> ServiceProcess:
        """Start and wait until ``wait_for`` answers 200 (``/healthz``: only the process)."""
        with self._log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "loraswap.cli", "serve"], env=self._env,
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}{wait_for}", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"serve not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """Everything the process printed."""
        return self._log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then kill if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
