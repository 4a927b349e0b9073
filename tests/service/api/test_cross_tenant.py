"""Every tenant × every other tenant's adapter × every endpoint is refused like a miss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.service.api.test_admin_api import ADMIN, create_tenant, upload
from tests.service.conftest import LiveServer, PackageFactory, ServerFactory

TENANTS = ("alpha", "beta", "gamma")

Call = Callable[[httpx.Client, dict[str, str], str], httpx.Response]

ENDPOINTS: dict[str, Call] = {
    "predict": lambda c, h, a: c.post("/v1/predict", headers=h, json={
        "adapter": a, "inputs": "hi", "parameters": {"max_new_tokens": 2}}),
    "predict-stream": lambda c, h, a: c.post("/v1/predict", headers=h, json={
        "adapter": a, "inputs": "hi", "stream": True, "parameters": {"max_new_tokens": 2}}),
    "completions": lambda c, h, a: c.post("/v1/completions", headers=h, json={
        "model": a, "prompt": "hi", "max_tokens": 2}),
    "chat": lambda c, h, a: c.post("/v1/chat/completions", headers=h, json={
        "model": a, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    "model-card": lambda c, h, a: c.get(f"/v1/models/{a}", headers=h),
}

ADMIN_CALLS: dict[str, Callable[[httpx.Client, dict[str, str], str], httpx.Response]] = {
    "admin-get": lambda c, h, a: c.get(f"/admin/adapters/{a}", headers=h),
    "admin-promote": lambda c, h, a: c.post(f"/admin/adapters/{a}/promote", headers=h,
                                            json={"version": 1}),
    "admin-rollback": lambda c, h, a: c.post(f"/admin/adapters/{a}/rollback", headers=h),
    "admin-pin": lambda c, h, a: c.put(f"/admin/adapters/{a}/pin", headers=h),
    "admin-delete": lambda c, h, a: c.delete(f"/admin/adapters/{a}/versions/1", headers=h),
    "admin-upload": lambda c, h, a: c.post(f"/admin/adapters/{a}/versions", headers=h,
                                           files=[("files", ("x.json", b"{}"))]),
    "admin-tenants": lambda c, h, a: c.get("/admin/tenants", headers=h),
}


@pytest.fixture
def world(live_server: ServerFactory, make_package: PackageFactory,
          ) -> tuple[LiveServer, dict[str, str]]:
    """Three tenants with one adapter each; their keys."""
    server = live_server(admin_token=ADMIN, dev_mode=False)
    keys = {}
    for index, tenant in enumerate(TENANTS):
        keys[tenant] = create_tenant(server, tenant)
        registered = upload(server, tenant, "private", make_package(tenant, seed=index))
        assert registered.status_code == 201
    return server, keys


def _error(response: httpx.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        raise AssertionError(f"streamed an answer: {response.text[:200]}")
    body: dict[str, Any] = response.json()["error"]
    return body


def test_no_tenant_reaches_another_tenants_adapter(
    world: tuple[LiveServer, dict[str, str]],
) -> None:
    server, keys = world
    checked = 0
    for caller, key in keys.items():
        headers = {"Authorization": f"Bearer {key}"}
        for owner in TENANTS:
            target = f"{owner}/private"
            missing = f"{owner}/no-such-adapter"
            for name, call in ENDPOINTS.items():
                response = call(server.client, headers, target)
                if owner == caller:
                    assert response.status_code == 200, (caller, target, name, response.text)
                    continue
                # Indistinguishable from an adapter that does not exist.
                absent = call(server.client, headers, missing)
                assert response.status_code == absent.status_code == 404, (caller, target, name)
                assert _error(response)["message"] == _error(absent)["message"].replace(
                    "no-such-adapter", "private"), (caller, target, name)
                checked += 1
            for name, call in ADMIN_CALLS.items():
                response = call(server.client, headers, target)
                assert response.status_code == 401, (caller, target, name)
                checked += 1
            listed = server.client.get("/v1/models", headers=headers).json()["data"]
            visible = {m["id"] for m in listed if m["loraswap"]["kind"] == "adapter"}
            assert visible == {f"{caller}/private"}
    assert checked == len(TENANTS) * (len(TENANTS) - 1) * len(ENDPOINTS) + len(
        TENANTS) ** 2 * len(ADMIN_CALLS)


def test_anonymous_callers_reach_no_tenant_adapter(
    world: tuple[LiveServer, dict[str, str]],
) -> None:
    server, _ = world
    for owner in TENANTS:
        for name, call in ENDPOINTS.items():
            response = call(server.client, {}, f"{owner}/private")
            assert response.status_code == 401, (owner, name)
