"""A local run gets the store's settings, never the server's secrets, and is killed at its
deadline (issue 23, finding 7)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from loraswap.core.errors import ConfigurationError
from loraswap.jobs.retrain_runs import RunRecord, RunTrigger
from loraswap.service.drift.launchers import LocalLauncher
from loraswap.service.settings import Settings

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


def test_run_logs_are_private_to_the_user_and_never_follow_a_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run logs hold training data. The folder is created readable by this user only;
    one owned by another user (a shared temporary folder another account made first: the
    unprivileged CI run failed on /tmp/loraswap-retrain) and a log that is a symbolic link
    are refused with an error naming them, before any process starts."""
    launcher = LocalLauncher({}, tmp_path / "logs")
    launcher.command = lambda run: [  # type: ignore[method-assign]
        sys.executable, "-c", "print('ran')"]
    launcher.launch(RUN)
    launcher.wait_all(timeout=60)
    assert (tmp_path / "logs").stat().st_mode & 0o777 == 0o700
    log = tmp_path / "logs" / f"retrain-{RUN.id}.log"
    assert log.stat().st_mode & 0o777 == 0o600 and "ran" in log.read_text()

    elsewhere = tmp_path / "elsewhere.txt"
    log.unlink()
    log.symlink_to(elsewhere)
    with pytest.raises(ConfigurationError, match=str(log)):
        launcher.launch(RUN)
    assert not elsewhere.exists()

    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)
    with pytest.raises(ConfigurationError, match="belongs to another user"):
        LocalLauncher({}, tmp_path / "logs").launch(RUN)


def test_the_default_run_log_folder_is_the_users_own() -> None:
    assert Settings().run_log_dir.is_relative_to(Path.home())
