"""Token-cls feedback: ``labels``, one tag per word of the input, checked against the
input's words and the adapter version's labels, stored beside the capture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from loraswap.adapters.package import TaskKind
from loraswap.adapters.store import open_store
from loraswap.core.errors import InvalidRequestError
from loraswap.core.identity import AdapterVersionRef
from loraswap.jobs.training_data import read_parquet_batches
from loraswap.service.drift.capture import CapturedPrediction
from loraswap.service.drift.feedback import FeedbackRequest, FeedbackService
from loraswap.service.drift.metrics import DriftMetrics
from tests.conftest import write_classifier_adapter
from tests.service.conftest import ServerFactory, upload_files
from tests.service.drift.helpers import owner

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TEXT = "Ada Lovelace lived in London."  # words: Ada Lovelace lived in London .
TAGS = ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]
REF = AdapterVersionRef.parse("acme/ner@1")


class FakeCapture:
    """The capture side of one captured token-cls prediction; keeps the feedback rows."""

    def __init__(self) -> None:
        self.entry = CapturedPrediction("pred-abc", 0, REF.owner, REF.name, REF.version,
                                        TaskKind.TOKEN_CLS, TEXT, None, None)
        self.rows: list[dict[str, Any]] = []

    def owner_of(self, tenant: str) -> str | None:
        return tenant

    def captured(self, key: str, owner: str) -> CapturedPrediction | None:
        return self.entry if key == "pred-abc-0" and owner == REF.owner else None

    def was_uncaptured(self, key: str) -> str | None:
        return None

    def flush(self, timeout: float = 30.0) -> bool:
        return True  # written

    def add_feedback(self, row: dict[str, Any], tenant: str, adapter: str) -> None:
        self.rows.append({"tenant": tenant, "adapter": adapter, **row})


@pytest.fixture
def service() -> tuple[FeedbackService, FakeCapture]:
    """A feedback service that knows the adapter's labels, over one captured prediction."""
    capture = FakeCapture()
    labels = {REF: NER_LABELS}
    feedback = FeedbackService(capture, DriftMetrics(CollectorRegistry()), 2,  # type: ignore
                               labels.get)
    return feedback, capture


def test_word_tags_are_stored_beside_the_capture(
        service: tuple[FeedbackService, FakeCapture]) -> None:
    feedback, capture = service
    answer = feedback.record(FeedbackRequest(prediction_id="pred-abc", labels=TAGS), "acme")
    assert answer.correct is None and answer.adapter == "acme/ner"
    assert [(r["adapter"], r["input"], r["labels"], r["task"]) for r in capture.rows] == [
        ("ner", TEXT, TAGS, "token-cls")]


@pytest.mark.parametrize(("body", "message"), [
    ({"labels": TAGS[:-1]}, "'labels' has 5 tags but the input has 6 words"),
    ({"labels": [*TAGS[:-1], "B-ORG"]}, "tags [\"B-ORG\"] that acme/ner version 1 does not "
                                         "know; its labels: [\"O\", \"B-PER\""),
    ({"label": "B-PER"}, "send 'labels', one tag per word of the input (6 words: "
                         "[\"Ada\", \"Lovelace\", \"lived\", \"in\", \"London\", \".\"])"),
    ({"text": "Ada"}, "send 'labels'"),
])
def test_tags_that_do_not_fit_are_refused_naming_the_problem(
        service: tuple[FeedbackService, FakeCapture], body: dict[str, object],
        message: str) -> None:
    feedback, capture = service
    with pytest.raises(InvalidRequestError) as caught:
        feedback.record(FeedbackRequest.model_validate({"prediction_id": "pred-abc", **body}),
                        "acme")
    assert message in caught.value.message
    assert not capture.rows  # nothing stored


def test_exactly_one_kind_of_ground_truth_is_accepted() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'label'"):
        FeedbackRequest.model_validate({"prediction_id": "pred-a", "label": "O",
                                        "labels": ["O"]})
    with pytest.raises(ValidationError):
        FeedbackRequest.model_validate({"prediction_id": "pred-a", "labels": []})


def test_token_feedback_over_http_checks_the_served_versions_labels(
        live_server: ServerFactory, tiny_base_dir: Path, tmp_path: Path) -> None:
    admin = {"Authorization": "Bearer adm-" + "7" * 40}
    server = live_server(admin_token=admin["Authorization"][7:], dev_mode=False,
                         drift_enabled=True, drift_capture_flush_seconds=600)
    server.wait_ready()
    created = server.client.post("/admin/tenants", headers=admin,
                                 json={"name": "acme", "policy": {"capture": "all"}})
    key = {"Authorization": f"Bearer {created.json()['api_key']}"}
    package = write_classifier_adapter(tiny_base_dir, tmp_path / "ner", task="token-cls",
                                       labels=NER_LABELS, seed=3)
    registered = server.client.post("/admin/adapters/acme/ner/versions", headers=admin,
                                    files=upload_files(package))
    assert registered.status_code in (200, 201), registered.text
    answer = server.client.post("/v1/predict", headers=key,
                                json={"adapter": "acme/ner", "inputs": TEXT}).json()

    def send(tags: list[str]) -> tuple[int, str]:
        response = server.client.post("/v1/feedback", headers=key, json={
            "prediction_id": answer["id"], "labels": tags})
        return response.status_code, response.text

    assert send(TAGS)[0] == 200
    status, text = send(["B-DATE", *TAGS[1:]])
    assert status == 400 and "B-DATE" in text and "B-LOC" in text
    store = open_store(server.settings.store_uri)
    rows = read_parquet_batches(store, f"feedback/{owner(store, 'acme')}/ner/")
    assert [r["labels"] for r in rows] == [TAGS]  # written before the 200, once
