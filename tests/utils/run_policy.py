"""How the suite marks and judges its tests (a plugin of tests/conftest.py).

Markers are derived, never trusted: ``integration`` from the fixtures a test uses (and
S3 parameters, which start SeaweedFS) or its folder (external tools), ``slow`` from the
real model's fixture; and a test not marked ``integration`` that starts a child process
fails, so a missing marker cannot hide one. ``--fail-on-skip`` (``.ci/run``) turns every
skip but the expected ones (no CUDA on this machine) into a failed run, so a tool that is
missing in CI cannot pass quietly.
"""

from __future__ import annotations

import _posixsubprocess
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import torch

# Fixtures that start a server or child process on loopback: their tests are `integration`.
PROCESS_FIXTURES = frozenset({"live_server", "s3_server", "s3_bucket", "s3_env",
                              "isolated_pip"})
# Folders whose every test runs an external tool (kubectl, promtool, checkov, prometheus).
PROCESS_FOLDERS = ("tests/deploy/", "tests/monitoring/", "tests/e2e/")
# A parameter value that means the test runs against SeaweedFS (the `store` fixtures).
PROCESS_PARAMS = frozenset({"s3"})
# Fixtures that give the real SmolLM2 model: their tests are `slow`.
REAL_MODEL_FIXTURES = frozenset({"real_model_dir"})
# Skips a CI machine expects: GPU tests where torch sees no CUDA (and the reverse).
EXPECTED_SKIP_WORDS = ("CUDA",)

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fail-on-skip", action="store_true",
        help="fail the run if any test is skipped for a reason other than CUDA (CI)")
    parser.addoption(
        "--long-campaigns", action="store_true",
        help="run the long_campaign tests (the long fuzzing run); deselected otherwise")


def starts_processes(item: pytest.Item) -> bool:
    """Whether what the test uses starts a server or child process."""
    used = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    params = set(map(str, callspec.params.values())) if callspec is not None else set()
    return bool(used & PROCESS_FIXTURES or params & PROCESS_PARAMS
                or item.nodeid.startswith(PROCESS_FOLDERS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark by what a test uses, skip ``gpu`` tests where torch sees no CUDA device and
    deselect (not skip) ``long_campaign`` tests unless ``--long-campaigns`` is given."""
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False")
    cuda = torch.cuda.is_available()
    if not config.getoption("--long-campaigns"):
        campaigns = [i for i in items if i.get_closest_marker("long_campaign") is not None]
        if campaigns:
            config.hook.pytest_deselected(items=campaigns)
            items[:] = [i for i in items if i.get_closest_marker("long_campaign") is None]
    for item in items:
        if starts_processes(item):
            item.add_marker(pytest.mark.integration)
        if set(getattr(item, "fixturenames", ())) & REAL_MODEL_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("gpu") is not None and not cuda:
            item.add_marker(no_cuda)


@pytest.fixture(autouse=True)
def child_processes_need_integration(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test without the ``integration`` marker may not start a child process: selecting
    ``-m "not integration"`` must really start none (subprocess, asyncio and
    multiprocessing all go through one of the functions patched here)."""
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    name = request.node.nodeid

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(
            f"{name} starts a child process but is not marked integration: use a fixture of "
            f"tests/utils/run_policy.py PROCESS_FIXTURES or mark it")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_posixsubprocess, "fork_exec", refuse)  # multiprocessing
        patch.setattr(subprocess, "_fork_exec", refuse)  # subprocess, asyncio
        for spawn in ("fork", "posix_spawn", "posix_spawnp"):
            patch.setattr(os, spawn, refuse)
        yield


def unexpected_skips(session: pytest.Session) -> list[str]:
    """``nodeid: reason`` of every skipped test whose reason is not an expected one."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    found = []
    for report in getattr(reporter, "stats", {}).get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        if not any(word in reason for word in EXPECTED_SKIP_WORDS):
            found.append(f"{report.nodeid}: {reason}")
    return found


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not session.config.getoption("--fail-on-skip"):
        return
    skipped = unexpected_skips(session)
    if skipped and exitstatus == pytest.ExitCode.OK:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("!", "--fail-on-skip: these tests were expected to run",
                               red=True)
            for line in skipped:
                reporter.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
