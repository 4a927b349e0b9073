"""Fuzzing the service with schemathesis against its own OpenAPI schema (issue 13).

Every operation of ``/openapi.json`` gets generated requests (valid and invalid ones,
schemathesis' positive and negative modes), once without credentials and once with the
admin token (``/admin``) or a tenant key (``/v1``). Checked for every answer: no 5xx, and
every error body has the documented shape (``{"error": {..., "message": str}}``).

A short run is part of the test suite (``tests/service/test_fuzz_api.py``, a new seed each
run, printed on failure); the long run (>= 2,000 requests) is ``python -m pytest -q -s
--long-campaigns tests/service/test_fuzz_api.py::test_long_fuzz_campaign`` (see
docs/reliability.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import hypothesis.errors
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.generation import GenerationMode

logger = logging.getLogger(__name__)


@dataclass
class FuzzReport:
    """What a fuzzing run sent and what went wrong."""

    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def record(self, method: str, path: str, status: int, problem: str | None) -> None:
        """Count one answer; remember it if it broke a rule."""
        self.requests += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if problem is not None and len(self.failures) < 50:
            self.failures.append(f"{method} {path} -> {status}: {problem}")


def error_shape_problem(status: int, body: bytes) -> str | None:
    """Why an answer breaks the rules (5xx, or an error body not in the documented shape)."""
    if status >= 500:
        return f"server error: {body[:300]!r}"
    if status < 400:
        return None
    try:
        parsed: Any = httpx.Response(status, content=body).json()
    except ValueError:
        return f"error body is not JSON: {body[:300]!r}"
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(parsed, dict) or set(parsed) != {"error"} or not isinstance(error, dict):
        return f"error body is not {{'error': {{...}}}}: {body[:300]!r}"
    if not isinstance(error.get("message"), str) or not isinstance(error.get("code"), str):
        return f"error has no message or code: {body[:300]!r}"
    return None


HeadersFor = Callable[[str], dict[str, str]]


def fuzz(base_url: str, *, headers_for: HeadersFor, examples_per_operation: int,
         report: FuzzReport, seed: int, timeout_s: float = 60.0) -> FuzzReport:
    """Send generated requests for every operation of the service's schema; ``seed``
    picks them (the same seed sends the same requests again)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @hypothesis.seed(seed)
            @hypothesis.settings(max_examples=examples_per_operation, deadline=None,
                                 database=None,
                                 phases=[Phase.explicit, Phase.generate],
                                 suppress_health_check=list(HealthCheck))
            @hypothesis.given(case=strategy)
            def send(case: Any) -> None:
                response = case.call(base_url=base_url, headers=headers_for(case.path),
                                     timeout=timeout_s)
                report.record(case.method, case.formatted_path, response.status_code,
                              error_shape_problem(response.status_code, response.content))

            try:
                send()
            except hypothesis.errors.Unsatisfiable:
                continue  # nothing to make invalid (an operation without parameters)
    return report
