"""Native load for the overload run: ``wrk`` driven by ``overload_wrk.lua``.

A Python load generator on the server's own two cores could not send at twice the server's
capacity (the 60 s of load took 541 s to send), so the flood tenant's open loop and the
capacity measurement use ``wrk`` (C, one thread, a few percent of a core at these rates),
installed with apt-get on first use when it is missing. The Lua script keeps an open-loop
schedule, checks every answer (status, ``Retry-After`` on a 429, the token count of a 200)
and prints its tallies as one JSON line, parsed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("overload_wrk.lua")
_RESULT_PREFIX = "LOADGEN_JSON "
_DRAINED = "LOADGEN_DRAINED"


@dataclass(frozen=True)
class WrkPlan:
    """One wrk run: ``rate`` requests/s (0: closed loop) for ``seconds`` of sending."""

    url: str
    key: str
    body: str
    marker: str  # text every complete 200 body contains
    rate: float
    seconds: float
    connections: int
    drain_seconds: float = 30.0  # open loop: longest wait for the last answers
    cpus: str | None = None  # taskset CPU list for wrk, e.g. "1"

    @property
    def planned(self) -> int:
        """Requests the open loop sends (0: a closed loop sends until time is up)."""
        return round(self.rate * self.seconds) if self.rate > 0 else 0

    def command(self) -> list[str]:
        """The wrk command line."""
        wrk = ensure_wrk()
        duration = self.seconds + (self.drain_seconds if self.planned else 0)
        prefix = ["taskset", "-c", self.cpus] if self.cpus else []
        return [*prefix, wrk, "-t1", f"-c{self.connections}", f"-d{max(1, round(duration))}s",
                "--timeout", "300s", "-s", str(SCRIPT), f"{self.url}/v1/predict", "--",
                f"{self.rate:.3f}", str(self.planned), self.key, self.body, self.marker]


def ensure_wrk() -> str:
    """The path of ``wrk``, installed with apt-get first when it is missing (as root)."""
    found = shutil.which("wrk")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for step in (["update", "-q"], ["install", "-y", "-q", "--no-install-recommends",
                                        "wrk"]):
            subprocess.run(["apt-get", *step], env=env, capture_output=True, timeout=600,
                           check=False)
        found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed and could not be: apt-get install wrk")
    return found


def parse_result(output: str) -> dict[str, object]:
    """The tallies from wrk's output (its ``LOADGEN_JSON`` line)."""
    for line in output.splitlines():
        if line.startswith(_RESULT_PREFIX):
            result = json.loads(line[len(_RESULT_PREFIX):])
            assert isinstance(result, dict)
            # Lua has no empty-object literal: a run with no answer has "statuses": {}.
            result.setdefault("statuses", {})
            return result
    raise RuntimeError(f"wrk printed no result:\n{output[-3000:]}")


async def run_wrk(plan: WrkPlan) -> dict[str, object]:
    """Run ``plan``; an open loop is stopped (SIGINT, which still prints the tallies) as
    soon as every request it sent is answered, or after ``drain_seconds`` at the latest."""
    process = await asyncio.create_subprocess_exec(
        *plan.command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    lines: list[str] = []

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if line == _DRAINED:
                _interrupt(process)

    try:
        await asyncio.wait_for(read(), timeout=plan.seconds + plan.drain_seconds + 60)
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return parse_result("\n".join(lines))


def _interrupt(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGINT)


def cpu_list(cpus: Sequence[int]) -> str:
    """``[0, 1]`` as taskset's ``"0,1"``."""
    return ",".join(str(cpu) for cpu in cpus)
