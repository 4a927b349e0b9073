"""Network and resource bounds of the namespace (issue 23, finding 7): a default-deny
NetworkPolicy with every allowed flow named, no store egress to anywhere, and a
ResourceQuota and LimitRange that the product's own pods fit in."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import OVERLAYS, Rendered

GI = 1 << 30


def memory(value: str) -> int:
    units = {"Mi": 1 << 20, "Gi": GI}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(value[:-2]) * factor
    return int(value)


def policies(rendered: Rendered) -> list[dict[str, Any]]:
    return [d for d in rendered.documents if d["kind"] == "NetworkPolicy"]


def selected(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def pod_templates(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    found = [(d["metadata"]["name"], d["spec"]["template"]) for d in rendered.documents
             if d["kind"] == "Deployment"]
    return [*found, ("retrain Job", rendered.job_template()["spec"]["template"])]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_namespace_denies_by_default_and_names_each_flow(
        rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    deny = r.find("NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny and "egress" not in deny
    for name, template in pod_templates(r):  # every pod has the flows it needs allowed
        labels = template["metadata"]["labels"]
        allowing = [p for p in policies(r) if p["metadata"]["name"] != "default-deny"
                    and selected(p, labels)]
        assert allowing, f"{overlay}: no policy allows any flow of {name}"
    for policy in policies(r):
        for rule in policy["spec"].get("egress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if "to" not in rule:  # to anywhere: only the Kubernetes API, only the server
                assert ports <= {443, 6443}, (policy["metadata"]["name"], rule)
                assert policy["metadata"]["name"] in ("loraswap", "loraswap-epp"), rule
    retrain = r.find("NetworkPolicy", "loraswap-retrain")["spec"]
    assert retrain["ingress"] == [] and all("to" in rule for rule in retrain["egress"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_quota_and_limits_bound_the_namespace_and_fit_its_pods(
        rendered: dict[str, Rendered], overlay: str) -> None:
    r = rendered[overlay]
    hard = r.find("ResourceQuota", "loraswap")["spec"]["hard"]
    limits = r.find("LimitRange", "loraswap")["spec"]["limits"]
    container_max = next(item["max"] for item in limits if item["type"] == "Container")
    for name, template in pod_templates(r):
        for container in template["spec"]["containers"]:
            resources = container.get("resources", {}).get("limits", {})
            assert memory(resources.get("memory", "0")) <= memory(container_max["memory"]), name
            assert int(resources.get("nvidia.com/gpu", 0)) <= int(
                container_max["nvidia.com/gpu"]), name
    server = r.find("Deployment", "loraswap")["spec"]["template"]["spec"]["containers"][0]
    job = r.job_template()["spec"]["template"]["spec"]["containers"][0]
    replicas = 9  # the autoscaler's 8 and one surging
    needed = replicas * memory(server["resources"]["limits"]["memory"]) + 3 * memory(
        job["resources"]["limits"]["memory"])  # 2 runs and a profiling job
    assert needed <= memory(hard["limits.memory"])
    assert replicas + 3 <= int(hard["requests.nvidia.com/gpu"])
    assert int(hard["pods"]) >= replicas + 3 + 1  # and the endpoint picker
