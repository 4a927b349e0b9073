"""What the gate refuses before a body is read, and inputs that used to break every tenant."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.conftest import LiveServer, ServerFactory

ADMIN = "adm-" + "5" * 40
GREEDY = {"max_new_tokens": 4, "ignore_eos": True}


@pytest.fixture
def production(live_server: ServerFactory) -> LiveServer:
    """Admin token set (keys required), small request bodies."""
    return live_server(admin_token=ADMIN, dev_mode=False, max_request_bytes=4096,
                       max_inputs_per_request=4, api_keys="static-key-1")


def _auth(key: str = "static-key-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_form_encoded_bodies_are_refused_with_415(production: LiveServer) -> None:
    body = b'{"inputs": "hello"}'
    form = {"content-type": "application/x-www-form-urlencoded", **_auth()}
    native = production.client.post("/v1/predict", content=body, headers=form)
    assert native.status_code == 415
    assert "application/json" in native.json()["error"]["message"]
    openai = production.client.post("/v1/chat/completions", content=body, headers=form)
    assert openai.status_code == 415
    assert openai.json()["error"]["code"] == "unsupported_media_type"  # OpenAI's shape
    assert "type" in openai.json()["error"]


def test_json_bodies_over_the_limit_are_413_declared_or_chunked(production: LiveServer) -> None:
    big = {"inputs": "x" * 5000}
    declared = production.client.post("/v1/predict", json=big, headers=_auth())
    assert declared.status_code == 413
    assert "LORASWAP_MAX_REQUEST_BYTES" in declared.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b'{"inputs": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    chunked = production.client.post(
        "/v1/predict", content=chunks(),
        headers={"content-type": "application/json", **_auth()})
    assert chunked.status_code == 413


def _raw_request(server: LiveServer, head: str) -> str:
    """Send only the request head (no body) and read what the server answers."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        return sock.recv(4096).decode(errors="replace")


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(
        production: LiveServer) -> None:
    """10 GB declared, nothing sent: the 401 comes at once (a server reading the body
    first would wait for it, and the read would time out)."""
    answer = _raw_request(production, (
        "POST /admin/adapters/acme/x/versions HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nContent-Length: {10 * 2**30}\r\n"
        "Content-Type: multipart/form-data; boundary=abc\r\n\r\n"))
    assert answer.startswith("HTTP/1.1 401"), answer


def test_an_oversized_upload_is_413_before_its_body_is_read(production: LiveServer) -> None:
    answer = _raw_request(production, (
        "POST /admin/adapters/acme/x/versions HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {ADMIN}\r\n"
        f"Content-Length: {10 * 2**30}\r\n"
        "Content-Type: multipart/form-data; boundary=abc\r\n\r\n"))
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "LORASWAP_MAX_UPLOAD_BYTES" in answer


def test_dev_mode_answers_only_requests_addressed_to_this_machine(
        live_server: ServerFactory) -> None:
    server = live_server()  # dev mode: /admin is open
    assert server.client.get("/admin/tenants").status_code == 200
    rebound = server.client.get("/admin/tenants", headers={"host": "evil.example"})
    assert rebound.status_code == 403 and "evil.example" in rebound.text
    cross_site = server.client.post("/admin/tenants", json={"name": "x"},
                                    headers={"origin": "https://evil.example"})
    assert cross_site.status_code == 403
    assert server.client.get("/admin/tenants").json() == []  # nothing was created


def test_adapter_names_never_become_metric_labels_unresolved(live_server: ServerFactory,
                                                             ) -> None:
    server = live_server()
    for name in ("\\ud800", "nope", "a/b"):  # a lone surrogate, escaped as JSON sends it
        response = server.client.post(
            "/v1/predict", content=f'{{"adapter": "{name}", "inputs": "hi"}}'.encode(),
            headers={"content-type": "application/json"})
        assert response.status_code in (400, 404), response.text
    metrics = server.client.get("/metrics")
    assert metrics.status_code == 200
    assert 'adapter="nope"' not in metrics.text and 'adapter="a/b"' not in metrics.text


def _predict(server: LiveServer, **body: Any) -> httpx.Response:
    return server.client.post("/v1/predict", json={"inputs": "the quick brown fox", **body})


def test_a_tiny_temperature_answers_like_greedy(live_server: ServerFactory) -> None:
    server = live_server()
    greedy = _predict(server, parameters=GREEDY)
    tiny = _predict(server, parameters={**GREEDY, "temperature": 1e-39, "seed": 1})
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["outputs"] == greedy.json()["outputs"]
    chat = server.client.post("/v1/chat/completions", json={
        "model": "base", "messages": [{"role": "user", "content": "hi"}],
        "temperature": 1e-39, "max_tokens": 3})
    assert chat.status_code == 200, chat.text


def test_stop_strings_are_bounded(live_server: ServerFactory) -> None:
    server = live_server()
    native = _predict(server, parameters={"stop": ["x" * 257]})
    assert native.status_code == 422
    openai = server.client.post("/v1/completions", json={
        "model": "base", "prompt": "hi", "stop": ["y" * 257]})
    assert openai.status_code == 400
    assert "256" in openai.json()["error"]["message"]


def test_requests_with_more_inputs_than_allowed_are_400(production: LiveServer) -> None:
    response = production.client.post("/v1/predict", headers=_auth(), json={
        "inputs": ["a", "b", "c", "d", "e"], "parameters": GREEDY})
    assert response.status_code == 400
    assert "LORASWAP_MAX_INPUTS_PER_REQUEST" in response.json()["error"]["message"]


def test_a_batch_larger_than_a_tenants_queue_share_is_400_not_429(
        live_server: ServerFactory) -> None:
    server = live_server(max_queue_per_tenant=2)
    response = _predict(server, inputs=["a", "b", "c"], parameters=GREEDY)
    assert response.status_code == 400
    assert "LORASWAP_MAX_QUEUE_PER_TENANT" in response.json()["error"]["message"]


def test_an_input_far_too_long_is_413_before_tokenizing(live_server: ServerFactory) -> None:
    server = live_server()  # max_input_tokens=128: at most 4096 characters
    response = _predict(server, inputs="word " * 20_000)
    assert response.status_code == 413
    assert "characters" in response.json()["error"]["message"]
