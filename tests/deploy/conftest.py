"""Rendered overlays, shared by the deployment checks (rendered once per session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import kubectl, run

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("gpu", "cpu", "gateway", "gpu-keda")
# API groups of the CRDs the overlays use (no offline schema: checked by kind and content).
CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/", "inference.networking.k8s.io/",
              "gateway.networking.k8s.io/")


@dataclass(frozen=True)
class Rendered:
    """One overlay as `kubectl kustomize` renders it."""

    overlay: str
    text: str
    documents: list[dict[str, Any]]

    def find(self, kind: str, name: str) -> dict[str, Any]:
        """The resource of ``kind`` named ``name``."""
        for doc in self.documents:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        raise AssertionError(f"{self.overlay}: no {kind} {name}")

    def built_in(self) -> list[dict[str, Any]]:
        """Resources of Kubernetes itself (validated against its schemas)."""
        return [d for d in self.documents if not d["apiVersion"].startswith(CRD_GROUPS)]

    def job_template(self) -> dict[str, Any]:
        """The retraining Job template, parsed from its ConfigMap."""
        config_map = self.find("ConfigMap", "loraswap-retrain-job-template")
        job: dict[str, Any] = yaml.safe_load(config_map["data"]["job.yaml"])
        return job


def render(directory: Path) -> Rendered:
    """Render a kustomization directory; fails with kustomize's message."""
    result = run([kubectl(), "kustomize", str(directory)])
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    return Rendered(directory.name, result.stdout, documents)


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    """Every overlay, rendered."""
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}
