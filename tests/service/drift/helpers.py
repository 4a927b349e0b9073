"""Shared builders of drift tests: profiles, records and a monitor on a private registry."""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from service.drift.metrics import DriftMetrics
from service.drift.monitor import DriftConfig, DriftMonitor
from service.drift.records import AdapterVersionRef, PredictionRecord
from service.drift.reference import parse_profile

REF = AdapterVersionRef("acme", "sentiment", "1")
DIM = 16


def profile(seed: int = 0) -> dict[str, Any]:
    """A profile.json like training/profile.py writes: lengths ~ 10±3 tokens, two labels
    at 50/50, confidences high, embeddings from N(0, I) projected on 4 axes."""
    rng = np.random.default_rng(seed)
    lengths = rng.normal(10, 3, 2000).clip(1)
    conf = rng.uniform(0.6, 1.0, 2000)
    vectors = rng.normal(0, 1, (512, DIM))
    mean = vectors.mean(0)
    basis = np.eye(DIM)[:4]
    return {
        "profile_version": 1, "task": "seq-cls",
        "input_length_tokens": histogram(lengths, 20, 0.0, float(lengths.max())),
        "confidence": histogram(conf, 20, 0.0, 1.0),
        "label_distribution": {"counts": {"neg": 1000, "pos": 1000},
                               "shares": {"neg": 0.5, "pos": 0.5}},
        "embedding_served": {
            "dim": DIM, "mean": mean.tolist(), "std": vectors.std(0).tolist(),
            "pca": {"components": basis.tolist(),
                    "reference_projections": ((vectors[:64] - mean) @ basis.T).tolist()},
        },
    }


def histogram(values: np.ndarray, bins: int, low: float, high: float) -> dict[str, Any]:
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return {"count": len(values), "histogram": {"edges": edges.tolist(),
                                                 "counts": counts.tolist()}}


def records(n: int, *, shift: float = 0.0, seed: int = 1, ref: AdapterVersionRef = REF,
            ) -> list[PredictionRecord]:
    """``n`` records like the profile's data; ``shift`` moves lengths, labels and vectors."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = "pos" if rng.random() < 0.5 + min(shift, 1) * 0.45 else "neg"
        out.append(PredictionRecord(
            prediction_id=f"pred-{seed}x{i}", index=0, ref=ref, task="seq-cls",
            input_text=f"text {i}", input_tokens=int(max(1, rng.normal(10 + 15 * shift, 3))),
            output={"label": label}, predicted_label=label,
            confidence=float(rng.uniform(0.6 - 0.5 * min(shift, 1), 1.0)),
            embedding=rng.normal(shift * 1.5, 1, DIM)))
    return out


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def monitor(active: dict[tuple[str, str], str] | None = None, *, min_samples: int = 50,
            window: int = 200) -> tuple[DriftMonitor, CollectorRegistry, FakeClock]:
    """A monitor (not started: tests call process/score_all) on its own registry."""
    registry = CollectorRegistry()
    clock = FakeClock()
    versions = active if active is not None else {("acme", "sentiment"): "1"}
    mon = DriftMonitor(
        DriftConfig(window_size=window, min_samples=min_samples, score_interval=1,
                    retire_interval=1),
        DriftMetrics(registry), lambda ref: parse_profile(profile()),
        lambda tenant, adapter: versions.get((tenant, adapter)), clock=clock)
    return mon, registry, clock


def score(registry: CollectorRegistry, signal: str, method: str,
          ref: AdapterVersionRef = REF) -> float | None:
    """The exported gauge value, None when the series is absent."""
    return registry.get_sample_value("loraswap_drift_score", {
        "tenant": ref.tenant, "adapter": ref.adapter, "version": ref.version,
        "signal": signal, "method": method})
