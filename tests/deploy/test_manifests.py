"""Every overlay renders and validates against the Kubernetes schemas (strict: unknown fields
fail), and carries what the service and the contract rely on."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import K8S, OVERLAYS, Rendered, render
from tests.deploy.prometheus_rule import prometheus_rule, rule_files
from tests.deploy.tools import run, venv_tool


def strict_validate(documents: list[dict[str, Any]], tmp_path: Path) -> tuple[int, str]:
    """`kubernetes-validate --strict` on ``documents``: exit status and output."""
    path = tmp_path / "resources.yaml"
    path.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    result = run([venv_tool("kubernetes-validate"), "--strict", "--quiet", str(path)])
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(rendered: dict[str, Rendered], overlay: str,
                                    tmp_path: Path) -> None:
    built_in = [*rendered[overlay].built_in(), rendered[overlay].job_template()]
    code, output = strict_validate(built_in, tmp_path)
    assert code == 0 and "WARN" not in output and "ERROR" not in output, output


def test_a_misspelled_field_fails_validation(tmp_path: Path) -> None:
    """A typo in a manifest (readinesProbe) breaks the check instead of being ignored."""
    overlay = tmp_path / "k8s"
    shutil.copytree(K8S, overlay)
    deployment = overlay / "base" / "deployment.yaml"
    text = deployment.read_text(encoding="utf-8")
    deployment.write_text(text.replace("readinessProbe:", "readinesProbe:"), encoding="utf-8")
    broken = render(overlay / "overlays" / "gpu")
    code, output = strict_validate(broken.built_in(), tmp_path)
    assert code != 0 and "readinesProbe" in output, output


def test_the_deployment_drains_before_kubernetes_kills_it(
        rendered: dict[str, Rendered]) -> None:
    for overlay in OVERLAYS:
        r = rendered[overlay]
        pod = r.find("Deployment", "loraswap")["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "loraswap")
        drain = float(r.find("ConfigMap", "loraswap-settings")["data"]["LORASWAP_DRAIN_SECONDS"])
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5, overlay
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/var/lib/loraswap", "/tmp", "/dev/shm", "/etc/loraswap/retrain"} <= mounts


def test_every_overlay_turns_drift_scoring_on(rendered: dict[str, Rendered]) -> None:
    # Without it the shipped LoraswapAdapterDrift rule can never fire in a deployment.
    for overlay in OVERLAYS:
        data = rendered[overlay].find("ConfigMap", "loraswap-settings")["data"]
        assert data["LORASWAP_DRIFT_ENABLED"] == "true", overlay


def test_gpu_overlay_asks_for_a_gpu_and_nf4(rendered: dict[str, Rendered]) -> None:
    r = rendered["gpu"]
    container = r.find("Deployment", "loraswap")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert r.find("ConfigMap", "loraswap-settings")["data"]["LORASWAP_QUANTIZATION"] == "nf4"


def test_retraining_job_template_and_role_follow_the_contract(
        rendered: dict[str, Rendered]) -> None:
    for overlay in OVERLAYS:
        r = rendered[overlay]
        job = r.job_template()
        assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
        container = next(c for c in job["spec"]["template"]["spec"]["containers"]
                         if c["name"] == "retrain")
        assert container["command"] == ["loraswap", "retrain", "run"]
        role = r.find("Role", "loraswap-retrain")
        # Only the verbs the launcher uses (create; delete to cancel a run).
        assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"],
                                  "verbs": ["create", "delete"]}]
        # The Job never gets the admin token (it does not use it).
        assert "LORASWAP_ADMIN_TOKEN" not in yaml.safe_dump(job)
        # The server and its Jobs run one image (the cpu overlay rewrote only the Job).
        pod_spec = r.find("Deployment", "loraswap")["spec"]["template"]["spec"]
        assert {c["image"] for c in pod_spec["containers"]} == {container["image"]}
        binding = r.find("RoleBinding", "loraswap-retrain")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "loraswap",
                                        "namespace": "loraswap"}]
        pod = r.find("Deployment", "loraswap")["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "loraswap"
        settings = r.find("ConfigMap", "loraswap-settings")["data"]
        assert settings["LORASWAP_RETRAIN_JOB_TEMPLATE"] == "/etc/loraswap/retrain/job.yaml"


def test_no_literal_secrets_in_any_manifest(rendered: dict[str, Rendered]) -> None:
    for r in rendered.values():
        assert not [d for d in r.documents if d["kind"] == "Secret"], r.overlay


def test_prometheus_rule_carries_every_rule_file(rendered: dict[str, Rendered]) -> None:
    """After a rule file changes: `python -m tests.deploy.prometheus_rule --write`."""
    assert rule_files(), "no monitoring/rules/*.rules.yml"
    for r in rendered.values():
        carried = r.find("PrometheusRule", "loraswap")["spec"]["groups"]
        assert carried == prometheus_rule()["spec"]["groups"], (
            "k8s/base/prometheusrule.yaml is out of date: run "
            "`python -m tests.deploy.prometheus_rule --write`")


def test_gateway_picker_reads_the_metrics_the_service_exports(
        rendered: dict[str, Rendered]) -> None:
    from loraswap.service import gateway_metrics

    args = rendered["gateway"].find("Deployment", "loraswap-epp")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    named = {a.split("=", 1)[1] for a in args if a.endswith(tuple(
        ["_waiting", "_running", "_perc", "_info"]))}
    # epp v1.0.x has no flag for running requests (see epp-flags.txt).
    assert named == {gateway_metrics.WAITING, gateway_metrics.KV_CACHE_USAGE,
                     gateway_metrics.LORA_INFO}


def _pinned_epp_flags() -> tuple[str, set[str]]:
    lines = [line.strip() for line in (K8S / "overlays" / "gateway" / "epp-flags.txt")
             .read_text().splitlines() if line.strip() and not line.startswith("#")]
    version = lines[0].removeprefix("version ")
    return version, set(lines[1:])


def test_gateway_picker_runs_the_pinned_version_with_only_its_flags_and_rbac(
        rendered: dict[str, Rendered]) -> None:
    """Go's flag parser exits on a flag its version does not define: every argument of the
    picker is a flag of the image it runs, and its Role grants what that version watches."""
    version, flags = _pinned_epp_flags()
    gateway = rendered["gateway"]
    container = gateway.find("Deployment", "loraswap-epp")["spec"]["template"]["spec"][
        "containers"][0]
    assert container["image"].endswith(f"/epp:{version}")
    used = {arg.removeprefix("--").split("=", 1)[0] for arg in container["args"]}
    assert used <= flags, f"flags epp {version} does not define: {sorted(used - flags)}"
    granted = {(group, resource) for rule in gateway.find("Role", "loraswap-epp")["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]
               if set(rule["verbs"]) >= {"get", "list", "watch"}}
    assert granted >= {("inference.networking.k8s.io", "inferencepools"),
                       ("inference.networking.x-k8s.io", "inferenceobjectives"), ("", "pods")}
    reviews = {resource for rule in gateway.find("ClusterRole", "loraswap-epp-auth")["rules"]
               for resource in rule["resources"] if "create" in rule["verbs"]}
    assert reviews == {"tokenreviews", "subjectaccessreviews"}
    binding = gateway.find("ClusterRoleBinding", "loraswap-epp-auth")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "loraswap-epp",
                                    "namespace": "loraswap"}]
