"""Alarm levels: in-distribution windows of adapters with 2 to 77 labels stay under them,
a shifted label mix crosses them, and the service exports and shows them."""

from __future__ import annotations

import numpy as np
import pytest

from loraswap.service.drift.assess import assess
from loraswap.service.drift.calibration import AlarmLevels, grid_size
from loraswap.service.drift.reference import ReferenceProfile
from loraswap.service.drift.scores import ALERT_BAND
from loraswap.service.drift.windows import VersionWindow
from tests.service.drift.helpers import monitor, records

WINDOWS = (100, 300, 500)


def label_reference(k: int, reference: int, rng: np.random.Generator,
                    ) -> tuple[np.ndarray, ReferenceProfile]:
    """A k-label adapter's true prediction mix (uneven, as real adapters favour some
    labels) and its profile: the shares of ``reference`` predictions drawn from it."""
    truth = rng.dirichlet(np.full(k, 2.0))
    counts = rng.multinomial(reference, truth)
    shares = {f"l{i}": float(c) / reference for i, c in enumerate(counts)}
    return truth, ReferenceProfile(labels=shares, label_source="predictions",
                                   label_inputs=reference)


def label_windows(profile: ReferenceProfile, truth: np.ndarray, size: int, count: int,
                  rng: np.random.Generator) -> list[VersionWindow]:
    levels = AlarmLevels()
    out = []
    for _ in range(count):
        window = VersionWindow(profile, size)
        window.levels = levels
        drawn = rng.choice(len(truth), size=size, p=truth)
        window.labels.extend((f"l{i}",) for i in drawn)
        window.lengths.extend([10.0] * size)
        out.append(window)
    return out


@pytest.mark.parametrize("k", [2, 5, 24, 77])
def test_in_distribution_label_mixes_stay_under_their_levels(k: int) -> None:
    # 5 references per adapter, 40 windows each at 3 sizes: 600 windows per label count.
    rng = np.random.default_rng(k)
    alarms = fixed_band = total = 0
    for _ in range(5):
        truth, profile = label_reference(k, 512, rng)
        for size in WINDOWS:
            for window in label_windows(profile, truth, size, 40, rng):
                assessed = assess(window, 100)
                alarms += any(a.alarm for a in assessed)
                fixed_band += any(a.score > ALERT_BAND for a in assessed)
                total += 1
    assert alarms / total <= 0.01, (alarms, total)
    if k == 77:  # the fixed 0.25 band alarmed on most of these windows
        assert fixed_band / total > 0.5, (fixed_band, total)


@pytest.mark.parametrize("k", [2, 24, 77])
def test_a_shifted_label_mix_crosses_the_level(k: int) -> None:
    rng = np.random.default_rng(100 + k)
    truth, profile = label_reference(k, 512, rng)
    # Half the traffic moves to the adapter's least predicted labels.
    shifted = truth / 2
    rare = np.argsort(truth)[:max(1, k // 4)]
    shifted[rare] += (1 / 2) / len(rare)
    windows = label_windows(profile, shifted / shifted.sum(), 300, 20, rng)
    alarms = [any(a.alarm for a in assess(w, 100) if a.signal == "predicted_label")
              for w in windows]
    assert all(alarms)


def test_levels_widen_for_small_windows_and_small_references() -> None:
    rng = np.random.default_rng(7)
    truth = rng.dirichlet(np.full(24, 2.0))

    def level(reference: int, size: int) -> float:
        _, profile = label_reference(24, reference, np.random.default_rng(1))
        window = label_windows(profile, truth, size, 1, rng)[0]
        return next(a.level for a in assess(window, 1) if a.method == "psi"
                    and a.signal == "predicted_label")

    assert level(512, 100) > level(512, 500)
    assert level(60, 500) > level(512, 500)
    assert grid_size(499) == 400 and grid_size(40) == 40


def test_levels_are_exported_beside_scores_and_the_view_says_which_alarm() -> None:
    mon, registry, _ = monitor()
    for record in records(200, seed=3):
        mon.process(record)
    mon.score_all()
    labels = {"tenant": "acme", "adapter": "acme/sentiment", "version": "1",
              "signal": "input_length", "method": "psi"}
    calm_level = registry.get_sample_value("loraswap_drift_alarm_level", labels)
    assert calm_level is not None and calm_level > 0
    view = mon.snapshot("acme", "sentiment")
    assert view is not None and view["alarm"] is False
    signals = view["signals"]
    assert isinstance(signals, dict) and set(signals) == set(view["scores"])  # type: ignore[arg-type]
    assert all(s["alarm"] is False and s["score"] <= s["alarm_level"] for s in signals.values())
    for record in records(200, shift=1.0, seed=4):
        mon.process(record)
    mon.score_all()
    view = mon.snapshot("acme", "sentiment")
    assert view is not None and view["alarm"] is True
    assert view["signals"]["input_length/psi"]["alarm"] is True  # type: ignore[index]
    assert registry.get_sample_value("loraswap_drift_score", labels) > registry.get_sample_value(  # type: ignore[operator]
        "loraswap_drift_alarm_level", labels)
