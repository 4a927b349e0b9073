"""A local run gets the store's settings, never the server's secrets, and is killed at its
deadline (issue 23, finding 7)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from loraswap.jobs.retrain_runs import RunRecord, RunTrigger
from loraswap.service.drift.launchers import LocalLauncher

pytestmark = pytest.mark.integration  # starts child processes

RUN = RunRecord(id="20261130100000-abcdef", tenant="acme", adapter="sentiment",
                trigger=RunTrigger(kind="manual"))


def test_a_local_run_inherits_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         ) -> None:
    monkeypatch.setenv("LORASWAP_ADMIN_TOKEN", "adm-secret")
    monkeypatch.setenv("LORASWAP_API_KEYS", '["k1"]')
    monkeypatch.setenv("LORASWAP_RETRAIN_WEBHOOK_TOKEN", "whk-secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    launcher = LocalLauncher({"LORASWAP_STORE_URI": tmp_path.as_uri()}, tmp_path / "logs")
    launcher.command = lambda run: [  # type: ignore[method-assign]
        sys.executable, "-c", "import os; print(sorted(os.environ))"]
    launcher.launch(RUN)
    launcher.wait_all(timeout=60)
    names = (tmp_path / "logs" / f"retrain-{RUN.id}.log").read_text()
    # Old code: the child got the server's whole environment.
    assert "LORASWAP_ADMIN_TOKEN" not in names and "LORASWAP_API_KEYS" not in names
    assert "LORASWAP_RETRAIN_WEBHOOK_TOKEN" not in names
    assert "LORASWAP_STORE_URI" in names and "AWS_REGION" in names


def test_a_local_run_is_killed_at_its_deadline(tmp_path: Path) -> None:
    launcher = LocalLauncher({}, tmp_path / "logs", timeout_seconds=0.5)
    launcher.command = lambda run: [  # type: ignore[method-assign]
        sys.executable, "-c", "import time; time.sleep(60)"]
    started = time.monotonic()
    launcher.launch(RUN)
    launcher.wait_all(timeout=30)  # old code: no deadline, waits the full minute
    assert time.monotonic() - started < 30
