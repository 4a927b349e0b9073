"""What the README promises about order through the HTTP API: per-tenant fairness, and a
running request finishing on the version it started with across a promotion.

Both hold the engine thread on an event (a call queued between its steps), so the order
of arrivals is fixed by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import httpx

from tests.service.conftest import LiveServer, PackageFactory, ServerFactory, upload_files

ADMIN = "adm-" + "4" * 40
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def _wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.01)


@contextmanager
def held_engine(server: LiveServer) -> Iterator[Any]:
    """Hold the engine thread (between two steps) for the duration; yields the engine."""
    engine = server.app.state.loraswap.components.engine
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(120)

    engine.thread.call(hold)
    try:
        assert held.wait(60), "the engine thread never picked up the hold"
        yield engine
    finally:
        release.set()


def run_while_held(server: LiveServer,
                   scenario: Callable[[Any, threading.Event], Awaitable[None]],
                   never_released: str) -> None:
    """Run ``scenario(engine, release)`` on its own event loop while the engine thread is
    held; the scenario sets ``release`` once its requests are queued as it wants them."""
    release = threading.Event()
    with held_engine(server) as engine:
        runner = threading.Thread(target=lambda: asyncio.run(scenario(engine, release)))
        runner.start()
        assert release.wait(120), never_released
    runner.join(120)


def _tenant(server: LiveServer, name: str) -> dict[str, str]:
    response = server.client.post("/admin/tenants", headers=ADMIN_HEADERS, json={"name": name})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['api_key']}"}


def test_one_tenants_flood_does_not_delay_another_over_http(
        live_server: ServerFactory) -> None:
    """One batch row; tenant A queues six requests, then tenant B one: B is admitted in
    the next turn (second), not after A's whole flood (FIFO would make it seventh)."""
    server = live_server(admin_token=ADMIN, dev_mode=False, max_batch_size=1)
    flood, other = _tenant(server, "flood"), _tenant(server, "other")
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 4, "ignore_eos": True}}
    finished: list[str] = []

    async def send(client: httpx.AsyncClient, who: str, headers: dict[str, str]) -> None:
        response = await client.post("/v1/predict", headers=headers, json=body)
        assert response.status_code == 200, response.text
        finished.append(who)

    async def scenario(engine: Any, release_engine: threading.Event) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            tasks = [asyncio.create_task(send(client, f"A{i}", flood)) for i in range(6)]
            await asyncio.to_thread(_wait_until, lambda: engine.scheduler.num_waiting == 6)
            tasks.append(asyncio.create_task(send(client, "B", other)))
            await asyncio.to_thread(_wait_until, lambda: engine.scheduler.num_waiting == 7)
            release_engine.set()
            await asyncio.gather(*tasks)

    run_while_held(server, scenario, "requests never queued")
    assert len(finished) == 7, finished
    assert finished.index("B") <= 1, finished


def _predict(client: httpx.AsyncClient, headers: dict[str, str]) -> Any:
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 2, "ignore_eos": True}}
    return client.post("/v1/predict", headers=headers, json=body)


@contextmanager
def held_tokenizer(server: LiveServer) -> Iterator[None]:
    """Keep the one tokenizer thread busy for the duration."""
    release = threading.Event()
    pipeline = server.app.state.loraswap.components.pipeline
    pipeline._tokenizer_thread.submit(release.wait, 120)  # its one thread, kept busy
    try:
        yield
    finally:
        release.set()


def test_a_request_over_its_tenants_queue_share_is_refused_before_tokenizing(
        live_server: ServerFactory) -> None:
    """The tokenizer thread is busy (as under a flood): a tenant's third request with a
    queue share of two is a 429 at once, without waiting its turn at the tokenizer (it used
    to queue there behind every tenant's requests, delaying them all, to be refused after);
    another tenant's request is not refused, and the admitted ones complete."""
    server = live_server(admin_token=ADMIN, dev_mode=False, max_queue_per_tenant=2)
    flood, calm = _tenant(server, "flood"), _tenant(server, "calm")

    async def scenario() -> tuple[list[int], int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            with held_tokenizer(server):
                sent = [asyncio.create_task(_predict(client, flood)) for _ in range(3)]
                done, _ = await asyncio.wait(sent, timeout=20,
                                             return_when=asyncio.FIRST_COMPLETED)
                assert len(done) == 1, "nothing was answered while the tokenizer was busy"
                refused = done.pop().result()
                assert refused.status_code == 429, refused.text
                assert "share of the queue" in refused.json()["error"]["message"]
                assert "retry-after" in refused.headers
                other = asyncio.create_task(_predict(client, calm))
                await asyncio.sleep(0.3)
                assert not other.done(), "the other tenant was refused"
            answers = await asyncio.gather(*sent, other)
        return sorted(a.status_code for a in answers[:3]), answers[3].status_code

    assert asyncio.run(scenario()) == ([200, 200, 429], 200)


def test_a_full_queue_makes_room_for_another_tenant_over_http(
        live_server: ServerFactory) -> None:
    """LORASWAP_MAX_QUEUE=2 and a share of 2 (the shares add up to more than the queue):
    tenant A fills the queue; tenant B's request still gets in, and A's newest waiting
    request is the one refused (429 with Retry-After)."""
    server = live_server(admin_token=ADMIN, dev_mode=False, max_batch_size=1, max_queue=2,
                         max_queue_per_tenant=2)
    flood, calm = _tenant(server, "flood"), _tenant(server, "calm")

    answers: list[httpx.Response] = []

    async def scenario(engine: Any, release_engine: threading.Event) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            first = asyncio.create_task(_predict(client, flood))
            await asyncio.to_thread(_wait_until, lambda: engine.scheduler.num_waiting == 1)
            newest = asyncio.create_task(_predict(client, flood))
            await asyncio.to_thread(_wait_until, lambda: engine.scheduler.num_waiting == 2)
            other = asyncio.create_task(_predict(client, calm))
            pushed_out = await asyncio.wait_for(newest, 20)  # answered while the engine waits
            release_engine.set()
            answers.extend([await first, pushed_out, await other])

    run_while_held(server, scenario, "the queue never filled")
    assert [a.status_code for a in answers] == [200, 429, 200], [a.text for a in answers]
    assert "holds the most" in answers[1].json()["error"]["message"]
    assert "retry-after" in answers[1].headers


def _stream_in_background(server: LiveServer, headers: dict[str, str], body: dict[str, Any],
                          events: list[tuple[str, dict[str, Any]]],
                          first_token: threading.Event) -> threading.Thread:
    def read() -> None:
        with httpx.stream("POST", f"{server.url}/v1/predict", headers=headers, json=body,
                          timeout=120) as response:
            kind = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line.removeprefix("data: "))))
                    first_token.set()

    reader = threading.Thread(target=read)
    reader.start()
    return reader


def test_a_running_request_finishes_on_the_version_it_started_with(
        live_server: ServerFactory, make_package: PackageFactory) -> None:
    server = live_server(admin_token=ADMIN, dev_mode=False)
    headers = _tenant(server, "acme")
    versions = "/admin/adapters/acme/helper/versions"
    for seed in (1, 2):
        response = server.client.post(versions, headers=ADMIN_HEADERS,
                                      files=upload_files(make_package(f"v{seed}", seed=seed)))
        assert response.status_code == 201, response.text
    body = {"adapter": "acme/helper", "inputs": "the quick brown fox",
            "parameters": {"max_new_tokens": 40, "ignore_eos": True}}
    v1 = server.client.post("/v1/predict", headers=headers, json=body).json()
    assert v1["adapter_version"] == "1"

    events: list[tuple[str, dict[str, Any]]] = []
    first_token = threading.Event()
    reader = _stream_in_background(server, headers, {**body, "stream": True}, events,
                                   first_token)
    assert first_token.wait(60)
    state_file = (Path(url2pathname(urlparse(server.settings.store_uri).path))
                  / "adapters" / "acme" / "helper" / "state.json")
    answers: list[httpx.Response] = []
    with held_engine(server) as engine:
        assert engine.scheduler.num_running == 1  # provably mid-generation
        # The promotion is in the store before the engine moves again (its answer
        # reports residency, which waits for the engine thread: sent from a thread).
        promoter = threading.Thread(target=lambda: answers.append(server.client.post(
            "/admin/adapters/acme/helper/promote", headers=ADMIN_HEADERS,
            json={"version": 2})))
        promoter.start()
        _wait_until(lambda: json.loads(state_file.read_text())["active"] == 2)
    promoter.join(120)
    assert answers and answers[0].status_code == 200, answers
    reader.join(120)
    kind, done = events[-1]
    assert kind == "done", events[-3:]
    assert done["adapter_version"] == "1"
    assert done["outputs"] == v1["outputs"]
    v2 = server.client.post("/v1/predict", headers=headers, json=body).json()
    assert v2["adapter_version"] == "2"
    assert v2["outputs"][0]["text"] != v1["outputs"][0]["text"]  # guard: versions differ
