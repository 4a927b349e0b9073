"""Where a retraining run executes: a low-priority local process, or a Kubernetes Job.

Both run ``loraswap retrain run --run-id ID``, which reads the run record from the store,
trains, evaluates and decides (``training/retrain.py``); never the engine thread.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from adapters.errors import ConfigurationError, StoreError
from adapters.retrain_runs import RunRecord

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CONTAINER = "retrain"


class Launcher(Protocol):
    """Starts the process of a queued run."""

    name: str

    def launch(self, run: RunRecord) -> str:
        """Start it; a description of where it runs (pid, Job name)."""
        ...


class LocalLauncher:
    """A separate ``nice 19`` process on this host; its environment names the store."""

    name = "local"

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self._env = env
        self._log_dir = log_dir
        self._children: list[subprocess.Popen[bytes]] = []

    def command(self, run: RunRecord) -> list[str]:
        """The command line of a run (the worktree's code, this interpreter)."""
        return [sys.executable, "-m", "loraswap.cli", "retrain", "run", "--run-id", run.id]

    def launch(self, run: RunRecord) -> str:
        """Start the run's process at the lowest CPU priority; its output goes to a log."""
        self._reap()
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log = (self._log_dir / f"retrain-{run.id}.log").open("ab")
        child = subprocess.Popen(
            self.command(run), env={**os.environ, **self._env}, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.nice(19), start_new_session=True)
        log.close()
        self._children.append(child)
        logger.info("retrain run %s started as pid %d (nice 19)", run.id, child.pid)
        return f"pid {child.pid}"

    def _reap(self) -> None:
        self._children = [c for c in self._children if c.poll() is None]

    def wait_all(self, timeout: float) -> None:
        """Wait for the runs this launcher started (tests, shutdown)."""
        for child in self._children:
            child.wait(timeout=timeout)


def render_job(template: dict[str, Any], run: RunRecord) -> dict[str, Any]:
    """The Job for ``run`` from the contract's template (``k8s`` ConfigMap
    ``loraswap-retrain-job-template``, key ``job.yaml``)."""
    if template.get("apiVersion") != "batch/v1" or template.get("kind") != "Job":
        raise ConfigurationError("the retrain Job template must be a batch/v1 Job")
    job = copy.deepcopy(template)
    metadata = job.setdefault("metadata", {})
    metadata["name"] = f"loraswap-retrain-{run.id}"
    metadata.pop("generateName", None)
    labels = {"loraswap.io/tenant": run.tenant, "loraswap.io/adapter": run.adapter,
              "loraswap.io/run-id": run.id}
    metadata.setdefault("labels", {}).update(labels)
    pod = job.setdefault("spec", {}).setdefault("template", {})
    pod.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    containers = pod.get("spec", {}).get("containers", [])
    target = [c for c in containers if c.get("name") == CONTAINER]
    if not target:
        raise ConfigurationError(f"the retrain Job template has no container named "
                                 f"{CONTAINER!r}")
    target[0]["args"] = [*target[0].get("args", []), "--run-id", run.id]
    return job


class KubernetesLauncher:
    """Creates a Job from the template, with the pod's service account (in-cluster)."""

    name = "kubernetes"

    def __init__(self, template_path: Path, *, api_url: str | None = None,
                 token: str | None = None, namespace: str | None = None,
                 client: httpx.Client | None = None) -> None:
        self._template_path = template_path
        self._api_url = api_url or ("https://" + os.environ.get("KUBERNETES_SERVICE_HOST", "")
                                    + ":" + os.environ.get("KUBERNETES_SERVICE_PORT", "443"))
        self._token = token
        self._namespace = namespace
        ca = SERVICE_ACCOUNT / "ca.crt"
        self._client = client or httpx.Client(verify=str(ca) if ca.is_file() else True,
                                              timeout=30)

    def _read(self, name: str) -> str:
        return (SERVICE_ACCOUNT / name).read_text().strip()

    def launch(self, run: RunRecord) -> str:
        """POST the rendered Job to the API server; the Job's name."""
        try:
            template = yaml.safe_load(self._template_path.read_text("utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"cannot read the retrain Job template "
                                     f"{self._template_path}: {exc}") from exc
        job = render_job(template, run)
        namespace = self._namespace or job["metadata"].get("namespace") or self._read(
            "namespace")
        token = self._token or self._read("token")
        response = self._client.post(
            f"{self._api_url}/apis/batch/v1/namespaces/{namespace}/jobs", json=job,
            headers={"Authorization": f"Bearer {token}"})
        if response.status_code >= 300:
            raise StoreError(f"creating Job {job['metadata']['name']} failed: "
                             f"{response.status_code} {response.text[:300]}")
        return str(job["metadata"]["name"])
