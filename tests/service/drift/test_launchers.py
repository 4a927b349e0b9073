"""The Kubernetes launcher renders the contract's Job template (a run, or a profiling job)
and creates it; local runs and jobs are separate processes at the lowest priority."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from loraswap.core.errors import ConfigurationError
from loraswap.jobs.profile_jobs import ProfileJob
from loraswap.jobs.retrain_runs import RunRecord, RunTrigger
from loraswap.service.drift.launchers import (
    KubernetesLauncher,
    LocalLauncher,
    render_job,
    render_profile_job,
)

# The shape the deploy helper ships as ConfigMap loraswap-retrain-job-template/job.yaml.
TEMPLATE = """
apiVersion: batch/v1
kind: Job
metadata:
  name: placeholder
  namespace: loraswap
  labels: {app.kubernetes.io/name: loraswap-retrain}
spec:
  backoffLimit: 0
  template:
    spec:
      serviceAccountName: loraswap
      restartPolicy: Never
      containers:
        - name: retrain
          image: loraswap:latest
          command: ["loraswap", "retrain", "run"]
          args: []
        - name: sidecar
          image: busybox
"""

RUN = RunRecord(id="20261130101010-abc123", tenant="acme", adapter="sentiment",
                trigger=RunTrigger(kind="manual"))


def test_the_job_is_named_labelled_and_given_the_run_id() -> None:
    job = render_job(yaml.safe_load(TEMPLATE), RUN)
    assert job["metadata"]["name"] == "loraswap-retrain-20261130101010-abc123"
    labels = job["metadata"]["labels"]
    assert labels["loraswap.io/tenant"] == "acme"
    assert labels["loraswap.io/adapter"] == "sentiment"
    assert labels["loraswap.io/run-id"] == RUN.id
    assert labels["app.kubernetes.io/name"] == "loraswap-retrain"
    retrain, sidecar = job["spec"]["template"]["spec"]["containers"]
    assert retrain["command"] == ["loraswap", "retrain", "run"]
    assert retrain["args"] == ["--run-id", RUN.id]
    assert "args" not in sidecar


def test_a_template_without_the_retrain_container_is_refused() -> None:
    template = yaml.safe_load(TEMPLATE)
    template["spec"]["template"]["spec"]["containers"][0]["name"] = "other"
    with pytest.raises(ConfigurationError, match="retrain"):
        render_job(template, RUN)


def test_the_job_is_posted_to_the_namespace_with_the_token(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(TEMPLATE)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={})

    launcher = KubernetesLauncher(path, api_url="https://k8s.invalid", token="sa-token",
                                  client=httpx.Client(transport=httpx.MockTransport(handler)))
    assert launcher.launch(RUN) == f"loraswap-retrain-{RUN.id}"
    (request,) = seen
    assert request.url.path == "/apis/batch/v1/namespaces/loraswap/jobs"
    assert request.headers["authorization"] == "Bearer sa-token"
    assert json.loads(request.content)["metadata"]["name"] == f"loraswap-retrain-{RUN.id}"


@pytest.mark.integration  # starts the local launcher's child process
def test_the_local_run_is_a_separate_process_at_the_lowest_priority(tmp_path: Path) -> None:
    launcher = LocalLauncher({"LORASWAP_STORE_URI": tmp_path.as_uri()}, tmp_path / "logs")
    command = launcher.command(RUN)
    assert command[1:] == ["-m", "loraswap.cli", "retrain", "run", "--run-id", RUN.id]
    launcher.command = lambda run: [  # type: ignore[method-assign]
        command[0], "-c", "import os; print('nice', os.nice(0))"]
    launcher.launch(RUN)
    launcher.wait_all(timeout=60)
    log = (tmp_path / "logs" / f"retrain-{RUN.id}.log").read_text()
    assert "nice 19" in log


PROFILE_JOB = ProfileJob(id="20261201101010-def456", tenant="acme", adapter="mood", version=3,
                         filename="r.csv", reference_key="k", text_column="text",
                         max_rows=2000)
PROFILE_ARGS = ["profile", "run", "--tenant", "acme", "--adapter", "mood", "--version", "3",
                "--job-id", PROFILE_JOB.id]


def test_a_profiling_job_runs_the_retrain_container_as_loraswap_profile_run() -> None:
    job = render_profile_job(yaml.safe_load(TEMPLATE), PROFILE_JOB)
    assert job["metadata"]["name"] == f"loraswap-profile-{PROFILE_JOB.id}"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["loraswap.io/profile-job"] == PROFILE_JOB.id
    assert labels["loraswap.io/tenant"] == "acme" and labels["loraswap.io/adapter"] == "mood"
    retrain, sidecar = job["spec"]["template"]["spec"]["containers"]
    assert retrain["command"] == ["loraswap"] and retrain["args"] == PROFILE_ARGS
    assert retrain["image"] == "loraswap:latest" and "args" not in sidecar


def test_the_local_profiling_job_runs_loraswap_profile_run() -> None:
    launcher = LocalLauncher({}, Path("/nonexistent"))
    assert launcher.profile_command(PROFILE_JOB)[1:] == ["-m", "loraswap.cli", *PROFILE_ARGS]
