"""API keys: which routes need one, what a wrong one gets, and how keys are configured."""

from __future__ import annotations

import hashlib
import logging

import httpx
import openai
import pytest

from loraswap.service.auth import ApiKeyAuthenticator, Tenant
from loraswap.service.errors import AuthenticationError
from loraswap.service.settings import Settings

KEYS = ["k-alpha-secret", "k-beta-secret"]


def test_keys_identify_tenants_and_are_not_kept_in_clear() -> None:
    auth = ApiKeyAuthenticator(KEYS)
    expected = "key-" + hashlib.sha256(KEYS[1].encode()).hexdigest()[:8]
    assert auth.authenticate(KEYS[1]) == Tenant(id=expected)
    assert auth.authenticate(KEYS[0]) != auth.authenticate(KEYS[1])
    for token in (None, "", "k-alpha", KEYS[0] + " "):
        with pytest.raises(AuthenticationError):
            auth.authenticate(token)
    assert not any(k in repr(vars(auth)) for k in KEYS)
    assert ApiKeyAuthenticator([]).authenticate(None) is None  # no keys: open API


def test_keys_come_from_a_comma_separated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORASWAP_API_KEYS", " k1, k2 ,")
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]
    assert "k1" not in repr(settings)  # settings may be logged; keys must not be
    monkeypatch.setenv("LORASWAP_API_KEYS", '["j1", "j2"]')
    assert [k.get_secret_value() for k in Settings().api_keys] == ["j1", "j2"]
    monkeypatch.delenv("LORASWAP_API_KEYS")
    assert Settings().api_keys == []


def test_configured_keys_guard_every_api_route(live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server(api_keys=KEYS)  # wait_ready polled /readyz without a key
    assert server.client.get("/healthz").status_code == 200
    assert server.client.get("/metrics").status_code == 200

    for key in KEYS:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        assert server.settings.base_model.name in {m.id for m in client.models.list()}
        done = client.completions.create(model="base", prompt="hi", max_tokens=2)
        assert done.usage is not None and done.usage.completion_tokens >= 1

    intruder = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        intruder.models.list()
    with pytest.raises(openai.AuthenticationError) as caught:
        intruder.chat.completions.create(model="base",
                                         messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body == {"message": "invalid API key", "type": "authentication_error",
                                 "param": None, "code": "invalid_api_key"}

    anonymous = httpx.post(f"{server.url}/v1/predict", json={"inputs": "hi"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in anonymous.json()["error"]["message"]
    # The key is checked before the body: no hints about the API to unauthenticated callers.
    junk = httpx.post(f"{server.url}/v1/completions", json={"nonsense": True},
                      headers={"Authorization": "Bearer wrong"})
    assert junk.status_code == 401
    allowed = httpx.post(f"{server.url}/v1/predict", json={
        "inputs": "hi", "parameters": {"max_new_tokens": 2}},
        headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert allowed.status_code == 200, allowed.text


def test_open_api_warns_at_startup(live_server, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.WARNING, logger="loraswap.service.auth"):
        server = live_server()
    assert any("open to anyone" in r.getMessage() for r in caplog.records)
    assert httpx.post(f"{server.url}/v1/predict", json={
        "inputs": "hi", "parameters": {"max_new_tokens": 1}}).status_code == 200
