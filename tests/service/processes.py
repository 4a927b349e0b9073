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
            self.launch()
            if self.wait_ready(timeout, wait_for):
                return self
        raise AssertionError(f"serve never bound a port:\n{self.log()}")

    def launch(self) -> None:
        """Start the child on a fresh port without waiting (see :meth:`wait_ready`)."""
        self.port = free_port()
        env = child_env({**self._extra_env, "LORASWAP_PORT": str(self.port)}, self._unset)
        with self._log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self._launcher, "serve"], env=env, cwd=REPO_ROOT,
                stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float, wait_for: str) -> bool:
        """True once ready; False if the port was taken before the child bound it."""
        assert self.process is not None
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

    def terminate(self) -> None:
        """Send SIGTERM (the start of a graceful stop) without waiting."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then kill if it hangs."""
        self.terminate()
        self.wait_stopped()

    def wait_stopped(self, timeout: float = 30) -> None:
        """Wait for a terminated process to exit; kill it if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def start_together(*processes: ServiceProcess, timeout: float = 180) -> None:
    """Start every process at once and wait until all are ready, as replicas of one
    Deployment start (and a start is mostly imports on one core: two cores start two in
    the time of one). One whose port was taken is started again on its own."""
    for process in processes:
        process.launch()
    for process in processes:
        if not process.wait_ready(timeout, "/readyz"):
            process.start(timeout)


def stop_together(*processes: ServiceProcess) -> None:
    """Stop every process gracefully, all draining at once."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait_stopped()
