"""Feedback cannot be turned into store work or held threads by a tenant (issue 23, 1)."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry

from loraswap.core.errors import NotFoundError
from loraswap.service.api.answers import new_request_id
from loraswap.service.drift.capture import CaptureWriter
from loraswap.service.drift.feedback import FeedbackRequest, FeedbackService
from loraswap.service.drift.metrics import DriftMetrics
from loraswap.service.errors import RateLimitedError
from tests.service.conftest import ServerFactory
from tests.service.drift.test_capture_feedback_api import ADMIN, ADMIN_HEADERS
from tests.service.drift.test_capture_index import CountingStore, answer, stamped_id


def service(store: CountingStore) -> tuple[CaptureWriter, FeedbackService]:
    capture = CaptureWriter(store, lambda tenant: 1.0, batch_rows=64, flush_seconds=600,
                            poll_seconds=0.01)
    capture.start()
    return capture, FeedbackService(capture, DriftMetrics(CollectorRegistry()), 2)


def test_unknown_ids_flush_nothing_and_list_a_bucket_at_most_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    capture, feedback = service(store)
    capture.submit(answer(new_request_id("pred")))  # tenant acme's pending batch
    time.sleep(0.1)
    store.calls.clear()
    now = int(time.time())
    for serial in range(10):  # another tenant probes ids that do not exist
        with pytest.raises(NotFoundError):
            feedback.record(FeedbackRequest(prediction_id=stamped_id(now, serial),
                                            label="pos"), "bravo")
    # Old code: every probe flushed acme's pending batch and listed the bucket twice.
    assert store.calls["put", "captures"] == 0 and store.calls["put", "capture-index"] == 0
    assert store.calls["list", "capture-index"] <= 1
    # An id minted in the future is in no bucket: only the keyed get of the old layout.
    store.calls.clear()
    with pytest.raises(NotFoundError):
        feedback.record(FeedbackRequest(prediction_id=stamped_id(now + 3600, 1),
                                        label="pos"), "bravo")
    assert set(store.calls) == {("get", "captures")}
    capture.stop()


def test_feedback_that_overtakes_its_capture_is_still_found(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    capture, feedback = service(store)
    prediction_id = new_request_id("pred")
    capture.submit(answer(prediction_id))  # feedback arrives before the writer ran
    answer_ = feedback.record(FeedbackRequest(prediction_id=prediction_id, label="pos"),
                              "acme")
    assert answer_.adapter == "acme/sentiment"
    capture.stop()


def test_feedback_calls_in_flight_are_capped(tmp_path: Path) -> None:
    """Each call may wait for a store write: only a few may hold executor threads, and
    one tenant only its share of them."""
    store = CountingStore(tmp_path / "store")
    capture, feedback = service(store)
    mine = [feedback.slot("bravo") for _ in range(2)]
    with pytest.raises(RateLimitedError, match="feedback is busy"):
        feedback.slot("bravo")  # its share is taken; others still get slots
    others = [feedback.slot(f"t{i}") for i in range(feedback.max_in_flight - 2)]
    with pytest.raises(RateLimitedError):
        feedback.slot("acme")  # every slot is taken
    for lease in mine + others:
        lease.release()
    feedback.slot("bravo").release()
    capture.stop()


def test_every_dependency_of_every_route_is_a_coroutine(tmp_path: Path) -> None:
    """Plain ``def`` dependencies take FastAPI's thread-pool hop (the drift and retrain
    dependencies did)."""
    from loraswap.service.app import create_app
    from loraswap.service.settings import Settings

    app = create_app(Settings(store_uri=(tmp_path / "s").as_uri(), dev_mode=True,
                              base_model=tmp_path / "none", adapter_dir=tmp_path / "a",
                              adapter_cache_dir=tmp_path / "c"))
    plain: set[str] = set()

    def walk(dependant: object) -> None:
        for dep in getattr(dependant, "dependencies", []):
            call = dep.call
            if (inspect.isfunction(call) and not inspect.iscoroutinefunction(call)
                    and not inspect.isasyncgenfunction(call)):
                plain.add(f"{call.__module__}.{call.__name__}")
            walk(dep)

    def flat(routes: list[object]) -> list[APIRoute]:
        found: list[APIRoute] = []
        for route in routes:
            if isinstance(route, APIRoute):
                found.append(route)
            else:  # an included router (FastAPI keeps the original one)
                inner = getattr(route, "original_router", route)
                found += flat(list(getattr(inner, "routes", [])))
        return found

    routes = flat(list(app.routes))
    assert any(r.path == "/v1/feedback" for r in routes)
    for route in routes:
        walk(route.dependant)
    assert plain == set()


def test_feedback_counts_against_the_tenants_rate_limit(live_server: ServerFactory) -> None:
    """A tenant limited to 1 request/s got every one of a burst of feedback calls
    answered (each a store lookup); now they are 429 like its predictions."""
    server = live_server(admin_token=ADMIN, dev_mode=False, drift_enabled=True,
                         drift_capture_flush_seconds=600)
    created = server.client.post("/admin/tenants", headers=ADMIN_HEADERS, json={
        "name": "bravo", "policy": {"requests_per_second": 1, "capture": "all"}})
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]
    codes = [server.client.post("/v1/feedback", headers={"Authorization": f"Bearer {key}"},
                                json={"prediction_id": new_request_id("pred"),
                                      "label": "pos"}).status_code for _ in range(6)]
    assert codes[0] == 404 and codes.count(429) >= 4, codes


def test_a_caller_that_owns_no_predictions_gives_feedback_on_none(tmp_path: Path) -> None:
    """Dev mode without keys: the anonymous caller was passed as None, which matched every
    tenant's predictions; now it owns none (tenant adapters need their tenant's key)."""
    store = CountingStore(tmp_path / "store")
    capture, feedback = service(store)
    prediction_id = new_request_id("pred")
    capture.submit(answer(prediction_id))
    with pytest.raises(NotFoundError):
        feedback.record(FeedbackRequest(prediction_id=prediction_id, label="pos"), "")
    assert feedback.record(FeedbackRequest(prediction_id=prediction_id, label="pos"),
                           "acme").adapter == "acme/sentiment"
    capture.stop()
