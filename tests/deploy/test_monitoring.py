"""Alert rules and dashboard queries: promtool parses and unit-tests them, and every metric
they read is one the service defines (a renamed metric breaks the build)."""

from __future__ import annotations

from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge

from tests.deploy.prometheus_rule import ROOT, rule_files
from tests.deploy.promql import (
    as_recording_rules,
    dashboard_expressions,
    defined_metric_names,
    rule_expressions,
    sample_names,
    used_metric_names,
)
from tests.deploy.tools import promtool, run


def undefined_names(expressions: list[str], defined: set[str]) -> dict[str, set[str]]:
    """Expression -> loraswap metric names it reads that nothing defines."""
    missing = {}
    for expr in expressions:
        unknown = used_metric_names(expr) - defined
        if unknown:
            missing[expr] = unknown
    return missing


def test_rule_files_pass_promtool_check() -> None:
    result = run([promtool(), "check", "rules", *map(str, rule_files())])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    tests = sorted((ROOT / "monitoring" / "tests").glob("*.test.yml"))
    assert tests
    result = run([promtool(), "test", "rules", *map(str, tests)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 15
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text(yaml.safe_dump(as_recording_rules(expressions)), encoding="utf-8")
    result = run([promtool(), "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_dashboard_query_fails_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "broken.rules.yml"
    rules.write_text(yaml.safe_dump(as_recording_rules(
        ["sum by (adapter (rate(loraswap_requests_total[5m]))"])), encoding="utf-8")
    assert run([promtool(), "check", "rules", str(rules)]).returncode != 0


def test_every_queried_metric_is_defined_by_the_service() -> None:
    """Names from the service's real metric objects, each with only the series its type
    exposes (a histogram has no ``_total``, a gauge no ``_bucket``)."""
    defined = defined_metric_names()
    assert "loraswap_requests_total" in defined  # service/metrics.py
    assert "loraswap_lora_requests_info" in defined  # and the gateway gauges
    assert "loraswap_request_duration_seconds_bucket" in defined
    assert "loraswap_requests_bucket" not in defined  # a counter has no buckets
    assert "loraswap_queue_depth_total" not in defined  # a gauge has no _total
    expressions = dashboard_expressions() + rule_expressions(rule_files())
    assert undefined_names(expressions, defined) == {}


def test_a_renamed_metric_is_caught() -> None:
    """Renaming a metric in the service leaves the dashboard reading a name nobody defines;
    reading a counter's series the wrong way (``_bucket``) is caught too."""
    renamed = CollectorRegistry()
    Gauge("loraswap_waiting_requests", "Renamed queue depth.", registry=renamed)
    Counter("loraswap_requests", "HTTP requests answered.", registry=renamed)
    names = sample_names(renamed.collect())
    assert undefined_names(["max(loraswap_queue_depth)"], names) == {
        "max(loraswap_queue_depth)": {"loraswap_queue_depth"}}
    assert undefined_names(["rate(loraswap_requests_bucket[5m])"], names) == {
        "rate(loraswap_requests_bucket[5m])": {"loraswap_requests_bucket"}}
