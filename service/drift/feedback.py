"""``POST /v1/feedback``: ground truth for a captured prediction, and live accuracy."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraswap.adapters.package import TaskKind
from loraswap.adapters.words import split_words
from loraswap.core.errors import ConflictError, InvalidRequestError, NotFoundError, StoreError
from loraswap.core.identity import AdapterVersionRef, Version
from loraswap.service.drift.capture import CapturedPrediction, CaptureWriter
from loraswap.service.drift.metrics import DriftMetrics
from loraswap.service.errors import RateLimitedError
from loraswap.service.limits import Lease

PREDICTION_ID = re.compile(r"^(pred|cmpl|chatcmpl)-[A-Za-z0-9]{1,64}$")
# Words of one token-cls feedback at most (an input longer than this is not trainable
# at the default 256-token training length anyway).
MAX_WORDS = 4096
# Feedback calls at once on a replica: each may wait (up to FLUSH_SECONDS) for a store
# write on a thread of the shared executor, which also serves every tenant's key lookups.
MAX_IN_FLIGHT = 8
MAX_IN_FLIGHT_PER_CALLER = 2  # of those, one caller's: it cannot take every slot
FLUSH_SECONDS = 10.0
# The labels of an adapter version (None: unknown, e.g. deleted since the prediction).
LabelLookup = Callable[[AdapterVersionRef], list[str] | None]
Tag = Annotated[str, Field(min_length=1, max_length=256)]


class FeedbackRequest(BaseModel):
    """The ground truth of one prediction: a label (seq-cls), word tags (token-cls) or a
    reference text (causal-lm)."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(description="The `id` of the /v1/predict answer.")
    index: int = Field(default=0, ge=0, le=4095,
                       description="Which input of a batch request (0 for a single input).")
    label: str | None = Field(default=None, max_length=256,
                              description="The true class (seq-cls adapters).")
    text: str | None = Field(default=None, max_length=65_536,
                             description="The expected answer (causal-lm adapters).")
    labels: list[Tag] | None = Field(
        default=None, min_length=1, max_length=MAX_WORDS,
        description="The true tag of each word of the input (token-cls adapters), words "
                    "split as the service splits them: runs of letters and digits, and "
                    "every other visible character alone.")

    @model_validator(mode="after")
    def _one_of(self) -> FeedbackRequest:
        if sum(v is not None for v in (self.label, self.text, self.labels)) != 1:
            raise ValueError("send exactly one of 'label' (seq-cls), 'labels' (token-cls: "
                             "one tag per word) or 'text' (generation)")
        return self


class FeedbackResponse(BaseModel):
    """What was stored."""

    prediction_id: str
    index: int
    adapter: str
    version: Version
    correct: bool | None = None


class FeedbackService:
    """Checks feedback against the capture index, queues it, keeps live accuracy."""

    def __init__(self, capture: CaptureWriter, metrics: DriftMetrics, min_feedback: int,
                 labels_of: LabelLookup = lambda key: None) -> None:
        """``labels_of`` gives a version's labels, to check labels and tags against."""
        self._capture = capture
        self._labels_of = labels_of
        self._metrics = metrics
        self._min_feedback = min_feedback
        self._lock = threading.Lock()
        self._counts: dict[AdapterVersionRef, list[int]] = {}  # ref -> [correct, total]
        self.max_in_flight = MAX_IN_FLIGHT
        self._in_flight: dict[str, int] = {}  # caller -> calls in flight (under _lock)

    def slot(self, caller: str) -> Lease:
        """One of the replica's feedback slots, or 429 when all are taken or ``caller``
        holds its share (without waiting: a waiting call would hold the event loop or a
        thread). The share keeps one tenant from taking every slot from the others."""
        with self._lock:
            mine = self._in_flight.get(caller, 0)
            if mine >= MAX_IN_FLIGHT_PER_CALLER or sum(
                    self._in_flight.values()) >= self.max_in_flight:
                raise RateLimitedError(
                    f"feedback is busy on this replica ({mine} of your calls in flight, at "
                    f"most {MAX_IN_FLIGHT_PER_CALLER} each and {self.max_in_flight} in all); "
                    "retry shortly", retry_after=1.0)
            self._in_flight[caller] = mine + 1

        def release() -> None:
            with self._lock:
                left = self._in_flight[caller] - 1
                if left:
                    self._in_flight[caller] = left
                else:
                    del self._in_flight[caller]

        return Lease(release)

    def record(self, body: FeedbackRequest, caller: str) -> FeedbackResponse:
        """Store one feedback row (store I/O: call off the event loop).

        ``caller`` is the caller's tenant ("" for one that owns no predictions: anonymous,
        or a static operator key). Unknown ids and ids of
        another tenant are 404 (alike, so ids of others are not disclosed); an answered
        but uncaptured prediction is 409; ground truth of the wrong kind for the task, a
        label the adapter does not have, and token-cls tags that do not fit the input's
        words or the adapter's labels, are 400.
        """
        if not PREDICTION_ID.fullmatch(body.prediction_id):
            raise InvalidRequestError(f"prediction_id {body.prediction_id!r} is not an id "
                                      "from a loraswap answer")
        key = f"{body.prediction_id}-{body.index}"
        # Only the caller's own captures are looked at (its data owner's index objects).
        owner = self._capture.owner_of(caller) if caller else None
        entry = self._capture.captured(key, owner) if owner is not None else None
        if entry is None and owner is not None and self._capture.is_queued(key):
            # Feedback overtook the capture thread on the replica that answered: let it
            # write what is queued. Only then: an unknown id must cost no flush.
            self._capture.flush(FLUSH_SECONDS)
            entry = self._capture.captured(key, owner)
        not_found = NotFoundError(f"no prediction {body.prediction_id!r} (input {body.index}) "
                                  "of yours is known here")
        if entry is None:
            uncaptured_by = self._capture.was_uncaptured(key)
            if uncaptured_by == caller:
                raise ConflictError(
                    f"prediction {body.prediction_id!r} was answered but not captured (the "
                    "tenant's capture policy is off or sampled it out), so it cannot take "
                    "feedback; set policy.capture to record predictions")
            raise not_found
        if entry.tenant != caller or owner is None:
            raise not_found
        correct = self._check(entry, body)
        ref = entry.ref
        row: dict[str, Any] = {
            "prediction_id": entry.prediction_id, "index": entry.index,
            "version": entry.version, "task": entry.task, "input": entry.input_text,
            "label": body.label, "text": body.text, "labels": body.labels,
            "predicted_label": entry.predicted_label, "received_at": time.time(),
        }
        self._capture.add_feedback(row, owner, entry.adapter)
        # Written before it is acknowledged: a crash after the 200 must not lose it.
        if not self._capture.flush(FLUSH_SECONDS):
            raise StoreError("the feedback could not be written to the store yet (it is "
                             "retried with the next batch); try again later")
        self._metrics.feedback.labels(*ref.labels).inc()
        if correct is not None:
            self._count(ref, correct)
        return FeedbackResponse(prediction_id=entry.prediction_id, index=entry.index,
                                adapter=str(ref.ref), version=ref.version, correct=correct)

    def _check(self, entry: CapturedPrediction, body: FeedbackRequest) -> bool | None:
        """Whether the prediction was right (None: not judged); 400 for the wrong kind."""
        if entry.task is TaskKind.CAUSAL_LM:
            if body.text is None:
                raise InvalidRequestError("this prediction is a generation: send 'text'")
            return None
        if entry.task is TaskKind.TOKEN_CLS:
            self._check_tags(entry, body.labels)
            return None
        if body.label is None:
            raise InvalidRequestError("this prediction is a classification: send 'label'")
        known = self._labels_of(entry.ref)
        if known is not None and body.label not in known:
            raise InvalidRequestError(
                f"'label' {body.label!r} is not a class of {entry.ref.ref} "
                f"version {entry.version}; its labels: {_shown(known)}")
        return body.label == entry.predicted_label

    def _check_tags(self, entry: CapturedPrediction, tags: list[str] | None) -> None:
        """One tag per word of the input, each a label of the adapter version."""
        words = split_words(entry.input_text)
        if tags is None:
            raise InvalidRequestError(
                f"this prediction tags words: send 'labels', one tag per word of the input "
                f"({len(words)} words: {_shown(words)})")
        if len(tags) != len(words):
            raise InvalidRequestError(
                f"'labels' has {len(tags)} tags but the input has {len(words)} words "
                f"({_shown(words)}); send one tag per word")
        known = self._labels_of(entry.ref)
        unknown = sorted({t for t in tags if t not in known}) if known is not None else []
        if unknown:
            raise InvalidRequestError(
                f"'labels' holds tags {_shown(unknown)} that {entry.ref.ref} "
                f"version {entry.version} does not know; its labels: {_shown(known or [])}")

    def _count(self, ref: AdapterVersionRef, correct: bool) -> None:
        with self._lock:
            counts = self._counts.setdefault(ref, [0, 0])
            counts[0] += int(correct)
            counts[1] += 1
            right, total = counts
        if total >= self._min_feedback:
            self._metrics.accuracy.labels(*ref.labels).set(right / total)

    def forget(self, ref: AdapterVersionRef) -> None:
        """Drop the accuracy counts of a version that no longer serves."""
        with self._lock:
            self._counts.pop(ref, None)


def _shown(items: list[str], limit: int = 40) -> str:
    """Items for an error message, JSON-quoted, the first ``limit`` of them."""
    head = json.dumps(items[:limit], ensure_ascii=False)
    return head if len(items) <= limit else f"{head[:-1]}, … {len(items) - limit} more]"
