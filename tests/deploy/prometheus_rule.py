"""The k8s PrometheusRule is generated from monitoring/rules/*.rules.yml (kustomize cannot
inline a file into a field). After changing a rule file, regenerate it:

    python -m tests.deploy.prometheus_rule --write
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "monitoring" / "rules"
PROMETHEUS_RULE = ROOT / "k8s" / "base" / "prometheusrule.yaml"
HEADER = ("# Generated from monitoring/rules/*.rules.yml by "
          "`python -m tests.deploy.prometheus_rule --write`; do not edit.\n")


def rule_files() -> list[Path]:
    """Every rule file, in name order (drift.rules.yml, serving.rules.yml, ...)."""
    return sorted(RULES_DIR.glob("*.rules.yml"))


def rule_groups() -> list[dict[str, Any]]:
    """The groups of every rule file, in file order."""
    groups: list[dict[str, Any]] = []
    for path in rule_files():
        groups.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    return groups


def prometheus_rule() -> dict[str, Any]:
    """The PrometheusRule resource carrying exactly those groups."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "loraswap", "labels": {"app.kubernetes.io/name": "loraswap"}},
        "spec": {"groups": rule_groups()},
    }


class _BlockDumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML has no stubs here
    """Writes multi-line strings (PromQL) as literal blocks, as in the rule files."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _string)


def render() -> str:
    """The file's text."""
    return HEADER + str(yaml.dump(prometheus_rule(), Dumper=_BlockDumper, sort_keys=False,
                                  width=1000))


def main() -> None:
    """``--write``: regenerate the file; otherwise exit 1 when it is out of date."""
    if "--write" in sys.argv[1:]:
        PROMETHEUS_RULE.write_text(render(), encoding="utf-8")
        return
    if PROMETHEUS_RULE.read_text(encoding="utf-8") != render():
        sys.stderr.write(f"{PROMETHEUS_RULE} is out of date: run with --write\n")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
