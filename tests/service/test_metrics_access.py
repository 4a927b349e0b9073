"""``/metrics`` on the API port names every tenant and adapter, so outside dev mode it needs
the metrics token or the admin token; the separate metrics listener stays open (issue 23,
finding 8)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from loraswap.core.errors import ConfigurationError
from loraswap.service.health import build_metrics_app
from loraswap.service.settings import Settings
from tests.service.conftest import ServerFactory

ADMIN = "adm-" + "4" * 40
SCRAPE = "scrape-" + "9" * 40


def test_metrics_on_the_api_port_need_a_token_outside_dev_mode(
        live_server: ServerFactory) -> None:
    server = live_server(admin_token=ADMIN, dev_mode=False, metrics_token=SCRAPE)
    key = server.client.post("/admin/tenants", headers={"Authorization": f"Bearer {ADMIN}"},
                             json={"name": "acme"}).json()["api_key"]
    anonymous = server.client.get("/metrics")
    assert anonymous.status_code == 401  # old code: 200, with every tenant's series
    assert "loraswap_" not in anonymous.text and "LORASWAP_METRICS_TOKEN" in anonymous.text
    assert server.client.get("/metrics", headers={"Authorization": f"Bearer {key}"}
                             ).status_code == 401  # a tenant's key reads nothing of others
    for token in (SCRAPE, ADMIN):
        scrape = server.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert scrape.status_code == 200 and "loraswap_" in scrape.text
    # The scrape token opens /metrics only.
    assert server.client.get("/admin/tenants", headers={
        "Authorization": f"Bearer {SCRAPE}"}).status_code == 401
    # The separate listener (LORASWAP_METRICS_PORT) needs none: the network guards it.
    state = server.app.state.loraswap
    listener = TestClient(build_metrics_app(state, server.app.state.lifecycle))
    assert listener.get("/metrics").status_code == 200


def test_dev_mode_keeps_metrics_open(live_server: ServerFactory) -> None:
    assert live_server().client.get("/metrics").status_code == 200


def test_the_metrics_token_must_be_a_secret_of_its_own() -> None:
    with pytest.raises(ConfigurationError, match="must differ"):
        Settings(admin_token=ADMIN, metrics_token=ADMIN).check_secure()
    with pytest.raises(ConfigurationError, match="placeholder"):
        Settings(admin_token=ADMIN, metrics_token="changeme").check_secure()
