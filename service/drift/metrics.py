"""Prometheus series of drift, feedback and retraining (names fixed in docs/drift.md).

Cardinality: only the *active* version of a registered adapter has drift series; a
version's series are removed when another version serves or the adapter goes, and at most
``LORASWAP_DRIFT_MAX_VERSIONS`` versions are tracked per replica. Per tracked version:
at most 5 ``loraswap_drift_score`` series (input_length/psi, confidence/psi,
predicted_label/psi, predicted_label/js, embedding/mmd) and as many
``loraswap_drift_alarm_level`` series (the score that sampling noise alone reaches in only
0.1 % of windows, see ``service/drift/calibration.py``), one window gauge, one accuracy
gauge and one feedback counter: 13 × LORASWAP_DRIFT_MAX_VERSIONS series in all (3,328
with the default 256).
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge

from loraswap.core.identity import AdapterVersionRef

VERSION_LABELS = ("tenant", "adapter", "version")


class DriftMetrics:
    """The drift gauges and counters, on the service's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.score = Gauge("loraswap_drift_score",
                           "Drift of the live window against the training profile.",
                           [*VERSION_LABELS, "signal", "method"], registry=registry)
        self.alarm_level = Gauge("loraswap_drift_alarm_level",
                                 "Alarm level of loraswap_drift_score with the same labels: "
                                 "what sampling noise alone scores in 0.1 % of windows of "
                                 "this size against this reference.",
                                 [*VERSION_LABELS, "signal", "method"], registry=registry)
        self.window_samples = Gauge("loraswap_drift_window_samples",
                                    "Inputs in the live drift window.", VERSION_LABELS,
                                    registry=registry)
        self.accuracy = Gauge("loraswap_live_accuracy",
                              "Share of labelled feedback that agrees with the prediction.",
                              VERSION_LABELS, registry=registry)
        self.feedback = Counter("loraswap_feedback", "Feedback records accepted.",
                                VERSION_LABELS, registry=registry)
        self.retrain_runs = Counter("loraswap_retrain_runs", "Retraining runs, by outcome.",
                                    ["tenant", "adapter", "outcome"], registry=registry)
        self.retrain_refusals = Counter(
            "loraswap_retrain_refusals", "Retrain alerts that started no run, by reason "
            "(ignored, rejected, busy, cooldown, limited).", ["reason"], registry=registry)
        self.dropped = Counter("loraswap_drift_records_dropped",
                               "Prediction records dropped (drift queue full or too many "
                               "versions tracked).", ["reason"], registry=registry)
        # Which score series exist per version, to remove exactly those.
        self._scores: dict[AdapterVersionRef, set[tuple[str, str]]] = {}

    def set_score(self, ref: AdapterVersionRef, signal: str, method: str, value: float,
                  level: float) -> None:
        """Export one score of one version and its alarm level."""
        self.score.labels(*ref.labels, signal, method).set(value)
        self.alarm_level.labels(*ref.labels, signal, method).set(level)
        self._scores.setdefault(ref, set()).add((signal, method))

    def remove_version(self, ref: AdapterVersionRef) -> None:
        """Drop every drift series of a version that no longer serves."""
        for signal, method in self._scores.pop(ref, set()):
            self.score.remove(*ref.labels, signal, method)
            self.alarm_level.remove(*ref.labels, signal, method)
        for gauge in (self.window_samples, self.accuracy, self.feedback):
            with contextlib.suppress(KeyError):  # never set for this version
                gauge.remove(*ref.labels)
