"""A request resolves its adapter once: a promotion during the request never mixes versions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from loraswap.service.api.pipeline import ServingPipeline
from loraswap.service.targets import ServingTarget
from tests.service.api.test_admin_api import ADMIN_HEADERS, create_tenant, upload
from tests.service.conftest import LiveServer, PackageFactory, ServerFactory

PROMPT = "the quick brown fox"
GREEDY = {"max_new_tokens": 8, "ignore_eos": True}


@pytest.fixture
def two_versions(live_server: ServerFactory, make_package: PackageFactory,
                 ) -> tuple[LiveServer, str, dict[str, str]]:
    """acme/helper with v1 active and v2 registered; the tenant key; each version's chat
    answer to PROMPT."""
    server = live_server(admin_token=ADMIN_HEADERS["Authorization"].split()[1],
                         dev_mode=False)
    key = create_tenant(server, "acme")
    assert upload(server, "acme", "helper", make_package("v1", seed=1)).status_code == 201
    assert upload(server, "acme", "helper", make_package("v2", seed=2)).status_code == 201
    texts = {}
    for version in ("2", "1"):  # ends with v1 active
        server.client.post("/admin/adapters/acme/helper/promote", headers=ADMIN_HEADERS,
                           json={"version": int(version)})
        texts[version] = _chat(server, key)["choices"][0]["message"]["content"]
    assert texts["1"] != texts["2"]  # the versions really answer differently
    return server, key, texts


def _chat(server: LiveServer, key: str) -> dict[str, Any]:
    response = server.client.post(
        "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"model": "acme/helper", "messages": [{"role": "user", "content": PROMPT}],
              "max_tokens": 8, "temperature": 0, "ignore_eos": True})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _promote_v2_while_loading(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Promote v2 after the request resolved its target but before it decodes the weights."""
    components = server.app.state.loraswap.components
    pipeline: ServingPipeline = components.pipeline
    real_load = pipeline.load

    async def load(target: ServingTarget) -> ServingTarget:
        await asyncio.to_thread(components.admin.registry.promote, "acme", "helper", 2)
        return await real_load(target)

    monkeypatch.setattr(pipeline, "load", load)


def test_openai_answer_uses_the_version_it_resolved(
        two_versions: tuple[LiveServer, str, dict[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    server, key, texts = two_versions
    _promote_v2_while_loading(server, monkeypatch)
    answer = _chat(server, key)["choices"][0]["message"]["content"]
    assert answer == texts["1"]
    monkeypatch.undo()
    assert _chat(server, key)["choices"][0]["message"]["content"] == texts["2"]


def test_native_answer_names_and_uses_the_version_it_resolved(
        two_versions: tuple[LiveServer, str, dict[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    server, key, _ = two_versions
    headers = {"Authorization": f"Bearer {key}"}
    body = {"adapter": "acme/helper", "inputs": PROMPT, "parameters": GREEDY}
    before = server.client.post("/v1/predict", headers=headers, json=body).json()
    _promote_v2_while_loading(server, monkeypatch)
    during = server.client.post("/v1/predict", headers=headers, json=body).json()
    assert during["adapter_version"] == "1"
    assert during["outputs"] == before["outputs"]
    after = server.client.post("/v1/predict", headers=headers, json=body).json()
    assert after["adapter_version"] == "2" and after["outputs"] != before["outputs"]
