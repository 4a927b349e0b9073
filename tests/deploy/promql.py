"""PromQL expressions of the dashboard and the rules, and the metric names they use, checked
against the metric names the service really defines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import Metric

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "loraswap.json"
_USED_NAME = re.compile(r"\bloraswap_[a-z0-9_]+\b")
# Grafana's variables, replaced by values Prometheus accepts.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                      "$namespace": "loraswap", "${datasource}": ""}
# The series each family type exposes (prometheus_client's text format).
_TYPE_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
                  "histogram": ("_bucket", "_count", "_sum", "_created"),
                  "summary": ("", "_count", "_sum", "_created"), "info": ("_info",),
                  "stateset": ("",), "enum": ("",), "unknown": ("",)}


def sample_names(families: Iterable[Metric]) -> set[str]:
    """The series names these metric families put in an exposition, by their type."""
    return {family.name + suffix for family in families
            for suffix in _TYPE_SUFFIXES[family.type]}


def service_families() -> list[Metric]:
    """Every family the service's /metrics can expose, from the real objects: a fresh
    :class:`ServiceMetrics` registry with the drift metrics on it, and the gateway gauges
    (described: while the model loads they export only some)."""
    from loraswap.service.drift.metrics import DriftMetrics
    from loraswap.service.gateway_metrics import GatewayCollector
    from loraswap.service.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    DriftMetrics(metrics.registry)
    return [*metrics.registry.collect(), *GatewayCollector(lambda: None, max_loras=1).describe()]


def defined_metric_names() -> set[str]:
    """Every series name the service can export (see :func:`service_families`)."""
    return sample_names(service_families())


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
