"""The drift alert rules pass ``promtool check rules`` and their ``promtool test rules``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.monitoring.debian_tools import ensure_binary

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"


def test_drift_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool = ensure_binary("promtool")
    check = subprocess.run([promtool, "check", "rules", "rules/drift.rules.yml"],
                           cwd=MONITORING, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "tests/drift.test.yml"],
                          cwd=MONITORING, capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout
