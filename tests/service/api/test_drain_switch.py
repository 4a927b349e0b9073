"""An operator takes a replica out of service and puts it back, through /admin/drain."""

from __future__ import annotations

import pytest

from loraswap.core.errors import ConflictError
from loraswap.service.lifecycle import Lifecycle
from tests.service.conftest import ServerFactory

ADMIN = "adm-" + "3" * 40
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
BODY = {"inputs": "the quick brown fox", "parameters": {"max_new_tokens": 2}}


def test_a_drained_replica_is_ready_again_after_the_drain_is_cancelled(
        live_server: ServerFactory) -> None:
    server = live_server(admin_token=ADMIN, dev_mode=False, api_keys="op-key-1")
    key = {"Authorization": "Bearer op-key-1"}
    assert server.client.get("/readyz").status_code == 200

    drained = server.client.post("/admin/drain", headers=ADMIN_HEADERS)
    assert drained.status_code == 200 and drained.json()["draining"] is True
    assert server.client.get("/readyz").json()["status"] == "draining"
    refused = server.client.post("/v1/predict", headers=key, json=BODY)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"

    assert server.client.delete("/admin/drain", headers=ADMIN_HEADERS).status_code == 200
    assert server.client.get("/readyz").status_code == 200
    assert server.client.post("/v1/predict", headers=key, json=BODY).status_code == 200


def test_the_drain_switch_needs_the_admin_token(live_server: ServerFactory) -> None:
    server = live_server(admin_token=ADMIN, dev_mode=False)
    assert server.client.post("/admin/drain").status_code == 401
    assert server.client.get("/readyz").status_code == 200


def test_a_sigterm_drain_cannot_be_cancelled() -> None:
    lifecycle = Lifecycle(drain_seconds=5)
    lifecycle.exiting = True
    lifecycle.begin_drain()
    with pytest.raises(ConflictError, match="SIGTERM"):
        lifecycle.cancel_drain()
    assert lifecycle.draining
