"""A short schemathesis run against the service's own OpenAPI schema, with and without
credentials: no 5xx, every error body in the documented shape, /metrics counted every
answer. Each run draws a new seed (printed on failure; ``FUZZ_SEED=N`` replays it), so CI
runs keep exploring. The long run (>= 2,000 requests) is a separate command, deselected
unless asked for:

    python -m pytest -q -s --long-campaigns tests/service/test_fuzz_api.py::test_long_fuzz_campaign
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter

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


def answered_by_status(server: LiveServer) -> Counter[int]:
    """``loraswap_requests_total`` summed by status, as /metrics shows it."""
    scrape = server.client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    assert scrape.status_code == 200
    counted: Counter[int] = Counter()
    for family in text_string_to_metric_families(scrape.text):
        for sample in family.samples:
            if sample.name == "loraswap_requests_total":
                counted[int(sample.labels["status"])] += int(sample.value)
    return counted


def run_fuzz_campaign(server: LiveServer, admin: dict[str, str], tenant: dict[str, str],
                      examples: int, seed: int) -> FuzzReport:
    """Fuzz without credentials, then with them; afterwards /metrics must have counted
    every answer the fuzzer got, by status (and no 5xx)."""
    report = FuzzReport()
    before = answered_by_status(server)
    fuzz(server.url, headers_for=lambda path: {}, examples_per_operation=examples,
         report=report, seed=seed)
    fuzz(server.url, headers_for=lambda path: admin if path.startswith("/admin") else tenant,
         examples_per_operation=examples, report=report, seed=seed)
    counted = answered_by_status(server) - before
    missing = {status: n - counted[status] for status, n in report.statuses.items()
               if counted[status] < n}
    assert missing == {}, f"seed {seed}: answers /metrics did not count, by status"
    assert not [status for status in counted if status >= 500], counted
    return report


def fuzz_seed() -> int:
    """``FUZZ_SEED`` to replay a run, else a new one."""
    return int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))


def test_fuzzing_finds_no_5xx_and_only_documented_errors(
        live_server: ServerFactory, make_package: PackageFactory) -> None:
    server, admin, tenant = fuzz_server(live_server, make_package)
    seed = fuzz_seed()
    report = run_fuzz_campaign(server, admin, tenant, EXAMPLES, seed)
    assert report.requests >= 50
    assert report.failures == [], f"FUZZ_SEED={seed}\n" + "\n".join(report.failures)
    assert any(400 <= status < 500 for status in report.statuses)


@pytest.mark.long_campaign
def test_long_fuzz_campaign(live_server: ServerFactory, make_package: PackageFactory) -> None:
    server, admin, tenant = fuzz_server(live_server, make_package)
    started = time.monotonic()
    seed = fuzz_seed()
    report = run_fuzz_campaign(server, admin, tenant, LONG_EXAMPLES, seed)
    summary = {"seed": seed, "requests": report.requests,
               "seconds": round(time.monotonic() - started, 1),
               "statuses": dict(sorted(report.statuses.items())),
               "failures": report.failures}
    print(json.dumps(summary))
    assert report.failures == [], "\n".join(report.failures)
    assert report.requests >= LONG_MIN_REQUESTS
