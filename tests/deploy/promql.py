"""PromQL expressions of the dashboard and the rules, and the metric names they use, checked
against the metric names the service really defines."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "loraswap.json"
SERVICE = ROOT / "service"
_METRIC_NAME = re.compile(r"^loraswap_[a-z0-9_]+$")
_USED_NAME = re.compile(r"\bloraswap_[a-z0-9_]+\b")
# What prometheus_client appends to a defined name in the exposition.
_SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count", "_info")
# Grafana's variables, replaced by values Prometheus accepts.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                      "$namespace": "loraswap", "${datasource}": ""}
# Fixed by the session contract and defined by the drift branch (service/drift/metrics.py);
# once that branch is merged the scan below finds them and this list can go.
def defined_metric_names(package: Path = SERVICE) -> set[str]:
    """Every series name the service can export: string constants that are metric names
    (``Counter("loraswap_requests", ...)``, ``WAITING = "loraswap_num_requests_waiting"``)
    with prometheus_client's suffixes."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and _METRIC_NAME.match(node.value):
                names.update(node.value + suffix for suffix in _SUFFIXES)
    return names


def used_metric_names(expr: str) -> set[str]:
    """The loraswap metric names an expression reads."""
    return set(_USED_NAME.findall(expr))


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every PromQL expression of the dashboard (panels, variables, annotations), with
    Grafana's variables replaced."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    raw: list[str] = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    raw += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), *\w+\)", str(variable.get("query", "")))
        if match:
            raw.append(match.group(1))
    expressions = []
    for expr in raw:
        for variable, value in _GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        expressions.append(expr)
    return expressions


def rule_expressions(rule_files: list[Path]) -> list[str]:
    """Every ``expr`` of the rule files."""
    return [rule["expr"] for path in rule_files
            for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
            for rule in group["rules"]]


def as_recording_rules(expressions: list[str]) -> dict[str, Any]:
    """A rules file that records each expression, so `promtool check rules` parses them."""
    return {"groups": [{"name": "dashboard", "rules": [
        {"record": f"loraswap_dashboard:expr_{i}", "expr": expr}
        for i, expr in enumerate(expressions)]}]}
