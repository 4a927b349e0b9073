"""Real ``loraswap serve`` processes on loopback, as an operator starts them."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.service.conftest import free_port
from tests.utils.env import REPO_ROOT, child_env

# What uvicorn prints when another process took the port between our pick and its bind.
_PORT_TAKEN = ("address already in use", "error while attempting to bind")
_BIND_ATTEMPTS = 5


class ServiceProcess:
    """One `loraswap serve` child process; output goes to a log file for failures.

    ``launcher``: the command before ``serve`` (default ``python -m loraswap.cli``; the
    fault-injecting ``tests.utils.patched_serve`` for crash and network tests). ``unset``:
    variables of ours the child must not inherit.
    """

    def __init__(self, env: dict[str, str], log_dir: Path,
                 launcher: Sequence[str] = ("-m", "loraswap.cli"),
                 unset: Sequence[str] = ()) -> None:
        self._extra_env = env
        self._unset = tuple(unset)
        self._launcher = list(launcher)
        self._log_path = Path(tempfile.mkstemp(prefix="serve-", suffix=".log", dir=log_dir)[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL of the running process."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180, wait_for: str = "/readyz") -> ServiceProcess:
        """Start and wait until ``wait_for`` answers 200 (``/healthz``: only the process).
        `loraswap serve` cannot bind port 0 and report it, so a port is picked here; if
        another process takes it before the child binds it, the child is started again on
        a fresh port."""
        for _ in range(_BIND_ATTEMPTS):
            if self._start_once(timeout, wait_for):
                return self
        raise AssertionError(f"serve never bound a port:\n{self.log()}")

    def _start_once(self, timeout: float, wait_for: str) -> bool:
        self.port = free_port()
        env = child_env({**self._extra_env, "LORASWAP_PORT": str(self.port)}, self._unset)
        with self._log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self._launcher, "serve"], env=env, cwd=REPO_ROOT,
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if any(sign in self.log().lower() for sign in _PORT_TAKEN):
                    return False
                raise AssertionError(f"serve exited {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}{wait_for}", timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"serve not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """Everything the process printed."""
        return self._log_path.read_text(errors="replace")[-6000:]

    def wait_killed(self, timeout: float = 60) -> int:
        """Wait for the process to die (e.g. by its own fault hook); its return code."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

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
