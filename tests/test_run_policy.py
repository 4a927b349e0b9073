"""The suite's own rules (tests/utils/run_policy.py) hold for the tests collected in this
run: the markers say what a test does, and a test not marked ``integration`` cannot start
a child process."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from tests.utils.run_policy import PROCESS_FIXTURES, REAL_MODEL_FIXTURES, starts_processes


def test_markers_match_what_each_collected_test_uses(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    assert request.node in items
    wrong = [item.nodeid for item in items
             if (starts_processes(item) and item.get_closest_marker("integration") is None)
             or (set(getattr(item, "fixturenames", ())) & REAL_MODEL_FIXTURES
                 and item.get_closest_marker("slow") is None)]
    assert wrong == []
    assert "live_server" in PROCESS_FIXTURES


def test_an_unmarked_test_cannot_start_a_child_process() -> None:
    """subprocess (fork_exec and posix_spawn paths) and asyncio are all refused here, so a
    test that starts one without the marker fails instead of hiding in `not integration`."""
    with pytest.raises(AssertionError, match="not marked integration"):
        subprocess.run(["true"], check=False)
    with pytest.raises(AssertionError, match="not marked integration"):
        subprocess.run(["true"], close_fds=False, check=False)  # the posix_spawn path

    async def spawn() -> None:
        await asyncio.create_subprocess_exec("true")

    with pytest.raises(AssertionError, match="not marked integration"):
        asyncio.run(spawn())
