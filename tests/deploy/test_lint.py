"""hadolint on the Dockerfile; checkov on the Dockerfile, every rendered overlay and the
retraining Job template, failing on anything but the checks listed, with a reason, in
k8s/checkov-skips.yaml."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import K8S, OVERLAYS, ROOT, Rendered
from tests.deploy.tools import checkov, run, venv_tool

SKIPS = K8S / "checkov-skips.yaml"


def test_dockerfile_passes_hadolint() -> None:
    result = run([venv_tool("hadolint"), str(ROOT / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n", encoding="utf-8")
    assert run([venv_tool("hadolint"), str(bad)]).returncode != 0


def _failed_checks(report: Any) -> list[str]:
    reports = report if isinstance(report, list) else [report]
    return [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
            for r in reports for c in r.get("results", {}).get("failed_checks", [])]


def test_checkov_passes_except_documented_skips(rendered: dict[str, Rendered],
                                                tmp_path: Path) -> None:
    skips: dict[str, str] = yaml.safe_load(SKIPS.read_text(encoding="utf-8"))
    assert all(reason and len(reason) > 40 for reason in skips.values()), "give each a reason"
    for overlay in OVERLAYS:
        r = rendered[overlay]
        job = r.job_template()
        job["metadata"]["namespace"] = "loraswap"  # where the launcher creates it
        (tmp_path / f"{overlay}.yaml").write_text(
            r.text + "---\n" + yaml.safe_dump(job), encoding="utf-8")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    result = run([checkov(), "--directory", str(tmp_path), "--framework", "kubernetes",
                  "dockerfile", "--skip-check", ",".join(skips), "--output", "json",
                  "--compact", "--quiet"], timeout=600)
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}, result.stderr
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports)
    # A manifest checkov cannot read is silently left out: make sure all were read.
    kubernetes = next(r for r in reports if r["check_type"] == "kubernetes")
    expected = sum(len(rendered[o].documents) + 1 for o in OVERLAYS)
    assert kubernetes["summary"]["resource_count"] >= expected * 0.9, kubernetes["summary"]
    assert _failed_checks(report) == []
