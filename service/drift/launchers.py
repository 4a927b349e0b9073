"""Where a retraining run or a profiling job executes: a low-priority local process, or a
Kubernetes Job.

A run is ``loraswap retrain run --run-id ID``, which reads the run record from the store,
trains, evaluates and decides (``training/retrain.py``); a profiling job is
``loraswap profile run --tenant T --adapter A --version V --job-id ID``
(``training/profile_job.py``). Never the engine thread.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import httpx
import yaml

from loraswap.core.errors import ConfigurationError, StoreError
from loraswap.jobs.profile_jobs import ProfileJob
from loraswap.jobs.retrain_runs import RunRecord

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CONTAINER = "retrain"


class Launcher(Protocol):
    """Starts the process of a queued run."""

    name: str

    def launch(self, run: RunRecord) -> str:
        """Start it; a description of where it runs (pid, Job name)."""
        ...

    def cancel(self, run: RunRecord) -> None:
        """Stop its process if this launcher started one (best effort)."""
        ...


class ProfileLauncher(Protocol):
    """Starts the process of a queued profiling job."""

    name: str

    def launch_profile(self, job: ProfileJob) -> str:
        """Start it; a description of where it runs (pid, Job name)."""
        ...


def profile_args(job: ProfileJob) -> list[str]:
    """The arguments of ``loraswap`` for a profiling job."""
    return ["profile", "run", "--tenant", job.tenant, "--adapter", job.adapter,
            "--version", str(job.version), "--job-id", job.id]


# What a local run inherits from the server's environment: the interpreter's and the
# store client's needs, never the server's secrets (admin token, API keys, webhook token).
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH",
                 "VIRTUAL_ENV", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE",
                 "SSL_CERT_FILE")
DEFAULT_TIMEOUT_SECONDS = 21_600.0  # as the Job template's activeDeadlineSeconds


def open_private_log(folder: Path, name: str) -> BinaryIO:
    """Open ``folder/name`` for appending, creating ``folder`` readable by this user only.

    A folder owned by another user (a shared temporary folder another account created
    first) or a log that is a symbolic link is refused with :class:`ConfigurationError`
    naming it: run logs hold training data and must not be written where others can
    read or redirect them."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise ConfigurationError(
            f"run log folder {folder} belongs to another user; set LORASWAP_RUN_LOG_DIR "
            "to a folder of your own")
    try:
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                     0o600)
    except OSError as exc:
        raise ConfigurationError(f"cannot write run log {folder / name}: {exc}") from exc
    return os.fdopen(fd, "ab")


class LocalLauncher:
    """Separate ``nice 19`` processes on this host, with an allow-listed environment (plus
    ``env``, which names the store) and a deadline after which the process group is
    killed."""

    name = "local"

    def __init__(self, env: dict[str, str], log_dir: Path, *,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._env = env
        self._log_dir = log_dir
        self._timeout = timeout_seconds
        self._children: list[subprocess.Popen[bytes]] = []
        self._runs: dict[str, subprocess.Popen[bytes]] = {}  # run id -> its process

    def command(self, run: RunRecord) -> list[str]:
        """The command line of a run (the worktree's code, this interpreter)."""
        return [sys.executable, "-m", "loraswap.cli", "retrain", "run", "--run-id", run.id]

    def launch(self, run: RunRecord) -> str:
        """Start the run's process at the lowest CPU priority; its output goes to a log."""
        pid = self._start(self.command(run), f"retrain-{run.id}", f"retrain run {run.id}")
        self._runs[run.id] = self._children[-1]
        return pid

    def cancel(self, run: RunRecord) -> None:
        """Stop the run's process group, if it is one of ours and still running."""
        child = self._runs.pop(run.id, None)
        if child is not None and child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)

    def profile_command(self, job: ProfileJob) -> list[str]:
        """The command line of a profiling job."""
        return [sys.executable, "-m", "loraswap.cli", *profile_args(job)]

    def launch_profile(self, job: ProfileJob) -> str:
        """Start a profiling job's process, like a run's."""
        return self._start(self.profile_command(job), f"profile-{job.id}",
                           f"profiling job {job.id}")

    def _start(self, command: list[str], log_name: str, what: str) -> str:
        self._reap()
        log = open_private_log(self._log_dir, f"{log_name}.log")
        inherited = {k: v for k, v in os.environ.items() if k in INHERITED_ENV}
        child = subprocess.Popen(
            command, env={**inherited, **self._env}, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.nice(19), start_new_session=True)
        log.close()
        self._children.append(child)
        deadline = threading.Timer(self._timeout, _kill_group, args=(child, what))
        deadline.daemon = True
        deadline.start()
        logger.info("%s started as pid %d (nice 19)", what, child.pid)
        return f"pid {child.pid}"

    def _reap(self) -> None:
        self._children = [c for c in self._children if c.poll() is None]
        self._runs = {k: c for k, c in self._runs.items() if c.poll() is None}

    def wait_all(self, timeout: float) -> None:
        """Wait for the processes this launcher started (tests, shutdown)."""
        for child in self._children:
            child.wait(timeout=timeout)


def _kill_group(child: subprocess.Popen[bytes], what: str) -> None:
    """Kill a process group that ran past its deadline (its record expires by heartbeat)."""
    if child.poll() is None:
        logger.error("%s ran past its deadline: killing pid %d", what, child.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)


def render_job(template: dict[str, Any], run: RunRecord) -> dict[str, Any]:
    """The Job for ``run`` from the contract's template (``k8s`` ConfigMap
    ``loraswap-retrain-job-template``, key ``job.yaml``): ``--run-id ID`` appended to the
    ``retrain`` container's args."""
    def set_args(container: dict[str, Any]) -> None:
        container["args"] = [*container.get("args", []), "--run-id", run.id]

    return _render(template, f"loraswap-retrain-{run.id}", {
        "loraswap.io/tenant": run.tenant, "loraswap.io/adapter": run.adapter,
        "loraswap.io/run-id": run.id}, set_args)


def render_profile_job(template: dict[str, Any], job: ProfileJob) -> dict[str, Any]:
    """The Job of a profiling job from the same template (same image, settings, store
    credentials and resources): the ``retrain`` container runs ``loraswap profile run``."""
    def set_command(container: dict[str, Any]) -> None:
        container["command"] = ["loraswap"]
        container["args"] = profile_args(job)

    return _render(template, f"loraswap-profile-{job.id}", {
        "loraswap.io/tenant": job.tenant, "loraswap.io/adapter": job.adapter,
        "loraswap.io/profile-job": job.id}, set_command)


def _render(template: dict[str, Any], name: str, labels: dict[str, str],
            adapt: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """A copy of the template named ``name``, with ``labels`` on the Job and its pod, and
    ``adapt`` applied to the ``retrain`` container."""
    if template.get("apiVersion") != "batch/v1" or template.get("kind") != "Job":
        raise ConfigurationError("the retrain Job template must be a batch/v1 Job")
    job = copy.deepcopy(template)
    metadata = job.setdefault("metadata", {})
    metadata["name"] = name
    metadata.pop("generateName", None)
    metadata.setdefault("labels", {}).update(labels)
    pod = job.setdefault("spec", {}).setdefault("template", {})
    pod.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    containers = pod.get("spec", {}).get("containers", [])
    target = [c for c in containers if c.get("name") == CONTAINER]
    if not target:
        raise ConfigurationError(f"the retrain Job template has no container named "
                                 f"{CONTAINER!r}")
    adapt(target[0])
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
        """POST the run's Job to the API server; the Job's name."""
        return self._create(render_job(self._template(), run))

    def cancel(self, run: RunRecord) -> None:
        """Delete the run's Job and its pod (the Role's ``delete`` verb on jobs)."""
        namespace = self._namespace or self._read("namespace")
        token = self._token or self._read("token")
        name = render_job({"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {
            "spec": {"containers": [{"name": CONTAINER}]}}}}, run)["metadata"]["name"]
        response = self._client.delete(
            f"{self._api_url}/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
            params={"propagationPolicy": "Background"},
            headers={"Authorization": f"Bearer {token}"})
        if response.status_code >= 300 and response.status_code != 404:
            raise StoreError(f"deleting Job {name} failed: {response.status_code} "
                             f"{response.text[:300]}")

    def launch_profile(self, job: ProfileJob) -> str:
        """POST a profiling job's Job (same template) to the API server; its name."""
        return self._create(render_profile_job(self._template(), job))

    def _template(self) -> dict[str, Any]:
        try:
            template: dict[str, Any] = yaml.safe_load(self._template_path.read_text("utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"cannot read the retrain Job template "
                                     f"{self._template_path}: {exc}") from exc
        return template

    def _create(self, job: dict[str, Any]) -> str:
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
