"""A short schemathesis run against the service's own OpenAPI schema, with and without
credentials: no 5xx, every error body in the documented shape, /metrics still scrapes.
The long run (>= 2,000 requests) is a separate command, not part of the default run:

    FUZZ_LONG=1 python -m pytest -q -s tests/service/test_fuzz_api.py::test_long_fuzz_campaign
"""

from __future__ import annotations

import json
import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import LiveServer, PackageFactory, ServerFactory, upload_files
from tests.service.fuzzing import FuzzReport, fuzz

ADMIN = "fuzz-admin-" + "5" * 32
# Generated requests per operation, per generation mode and per credential set.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2"))
LONG_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
LONG_MIN_REQUESTS = 2000


def fuzz_server(live_server: ServerFactory, make_package: PackageFactory) -> tuple[
        LiveServer, dict[str, str], dict[str, str]]:
    """A production-mode server (tiny model) with one tenant and one adapter; the admin
    and tenant headers."""
    server = live_server(admin_token=ADMIN, dev_mode=False, max_new_tokens_limit=8)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    created = server.client.post("/admin/tenants", headers=admin, json={"name": "acme"})
    assert created.status_code == 201, created.text
    tenant = {"Authorization": f"Bearer {created.json()['api_key']}"}
    uploaded = server.client.post("/admin/adapters/acme/chat/versions", headers=admin,
                                  files=upload_files(make_package("chat")))
    assert uploaded.status_code == 201, uploaded.text
    return server, admin, tenant


def run_fuzz_campaign(server: LiveServer, admin: dict[str, str], tenant: dict[str, str],
                      examples: int) -> FuzzReport:
    """Fuzz without credentials, then with them; check /metrics afterwards."""
    report = FuzzReport()
    fuzz(server.url, headers_for=lambda path: {}, examples_per_operation=examples,
         report=report)
    fuzz(server.url, headers_for=lambda path: admin if path.startswith("/admin") else tenant,
         examples_per_operation=examples, report=report)
    scrape = server.client.get("/metrics")
    assert scrape.status_code == 200
    families = {family.name for family in text_string_to_metric_families(scrape.text)}
    assert "loraswap_requests" in families or any(n.startswith("loraswap_") for n in families)
    return report


def test_fuzzing_finds_no_5xx_and_only_documented_errors(
        live_server: ServerFactory, make_package: PackageFactory) -> None:
    server, admin, tenant = fuzz_server(live_server, make_package)
    report = run_fuzz_campaign(server, admin, tenant, EXAMPLES)
    assert report.requests >= 50
    assert report.failures == [], "\n".join(report.failures)
    assert any(400 <= status < 500 for status in report.statuses)


@pytest.mark.skipif(os.environ.get("FUZZ_LONG") != "1",
                    reason="the long fuzzing run is a separate command (FUZZ_LONG=1)")
def test_long_fuzz_campaign(live_server: ServerFactory, make_package: PackageFactory) -> None:
    server, admin, tenant = fuzz_server(live_server, make_package)
    started = time.monotonic()
    report = run_fuzz_campaign(server, admin, tenant, LONG_EXAMPLES)
    summary = {"requests": report.requests, "seconds": round(time.monotonic() - started, 1),
               "statuses": dict(sorted(report.statuses.items())),
               "failures": report.failures}
    print(json.dumps(summary))
    assert report.failures == [], "\n".join(report.failures)
    assert report.requests >= LONG_MIN_REQUESTS
