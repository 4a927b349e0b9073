"""Windows, scores as gauges, the sample minimum, and retirement of old versions."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from loraswap.adapters.package import TaskKind
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.drift.reference import parse_profile
from tests.service.drift.helpers import monitor, profile, records, score

SIGNALS = [("input_length", "psi"), ("confidence", "psi"), ("predicted_label", "psi"),
           ("predicted_label", "js"), ("embedding", "mmd")]


def test_in_distribution_stays_below_warn_and_shift_crosses_alert() -> None:
    mon, registry, _ = monitor()
    for record in records(200, seed=3):
        mon.process(record)
    mon.score_all()
    calm = {s: score(registry, *s) for s in SIGNALS}
    assert all(v is not None and v < 0.1 for v in calm.values()), calm
    for record in records(200, shift=1.0, seed=4):
        mon.process(record)
    mon.score_all()
    drifted = {s: score(registry, *s) for s in SIGNALS}
    assert all(v is not None and v > 0.25 for v in drifted.values()), drifted


def test_scores_are_absent_until_the_window_has_enough_samples() -> None:
    mon, registry, _ = monitor(min_samples=50)
    for record in records(49):
        mon.process(record)
    mon.score_all()
    assert score(registry, "input_length", "psi") is None
    labels = {"tenant": "acme", "adapter": "acme/sentiment", "version": "1"}
    assert registry.get_sample_value("loraswap_drift_window_samples", labels) == 49
    mon.process(records(1, seed=9)[0])
    mon.score_all()
    assert score(registry, "input_length", "psi") is not None


def test_traffic_of_a_new_version_removes_the_old_versions_series() -> None:
    active = {("acme", "sentiment"): "1"}
    mon, registry, _ = monitor(active)
    for record in records(60):
        mon.process(record)
    mon.score_all()
    assert score(registry, "embedding", "mmd") is not None
    active[("acme", "sentiment")] = "2"
    v2 = AdapterVersionRef.parse("acme/sentiment@2")
    for record in records(60, ref=v2):
        mon.process(record)
    mon.score_all()
    assert score(registry, "embedding", "mmd") is None
    assert score(registry, "embedding", "mmd", v2) is not None
    text = registry_text(registry)
    assert 'version="1"' not in text


def test_a_promotion_without_traffic_retires_the_version_on_the_next_pass() -> None:
    active = {("acme", "sentiment"): "1"}
    mon, registry, clock = monitor(active)
    for record in records(60):
        mon.process(record)
    mon.score_all()
    active[("acme", "sentiment")] = "2"
    clock.now += 5
    mon.score_all()
    assert 'version="1"' not in registry_text(registry)
    assert mon.snapshot("acme", "sentiment") is None


def test_a_profile_without_served_embeddings_exports_no_embedding_score() -> None:
    document = profile()
    del document["embedding_served"]
    reference = parse_profile(document)
    assert reference.embedding is None and "embedding" in reference.missing
    assert parse_profile(None, task=TaskKind.SEQ_CLS).missing.keys() == {
        "input_length", "confidence", "predicted_label", "embedding"}
    # Without a manifest to say the task, every signal is named.
    assert len(parse_profile(None).missing) == 6


def test_versions_beyond_the_bound_are_not_tracked() -> None:
    mon, registry, _ = monitor({("acme", f"a{i}"): "1" for i in range(3)})
    mon.config = type(mon.config)(window_size=200, min_samples=50, max_versions=2)
    for i in range(3):
        mon.process(records(1, ref=AdapterVersionRef.parse(f"acme/a{i}@1"))[0])
    mon.score_all()
    assert registry.get_sample_value("loraswap_drift_records_dropped_total",
                                     {"reason": "max_versions"}) == 1
    assert registry_text(registry).count("loraswap_drift_window_samples{") == 2


def registry_text(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_a_reference_histogram_of_too_few_values_is_no_reference() -> None:
    document = profile()
    document["confidence"]["count"] = 16
    reference = parse_profile(document)
    assert reference.confidence is None and "16" not in reference.missing["confidence"]
    assert "at least 30" in reference.missing["confidence"]
