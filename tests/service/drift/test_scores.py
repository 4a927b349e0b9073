"""PSI, Jensen–Shannon distance and MMD on known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loraswap.service.drift.scores import bin_counts, js_distance, median_bandwidth, mmd_rbf, psi


def test_psi_is_zero_for_equal_mixes_and_matches_the_formula() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    ref, cur = [0.5, 0.5], [0.8, 0.2]
    expected = sum((c - r) * math.log(c / r) for r, c in zip(ref, cur, strict=True))
    assert psi([50, 50], [80, 20]) == pytest.approx(expected, rel=1e-3)


def test_psi_of_an_empty_bin_is_large_but_finite() -> None:
    value = psi([100, 0], [50, 50])
    assert math.isfinite(value) and value > 2


def test_values_outside_the_edges_count_in_the_end_bins() -> None:
    assert bin_counts([-5, 0.5, 1.5, 99], [0, 1, 2]).tolist() == [2, 2]


def test_js_distance_is_bounded_and_symmetric() -> None:
    assert js_distance([1, 1], [1, 1]) == pytest.approx(0.0, abs=1e-9)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_distance([3, 1], [1, 3]) == pytest.approx(js_distance([1, 3], [3, 1]))


def test_mmd_is_near_zero_in_distribution_and_large_when_shifted() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (64, 8))
    bandwidth = median_bandwidth(reference)
    same = mmd_rbf(reference, rng.normal(0, 1, (200, 8)), bandwidth)
    shifted = mmd_rbf(reference, rng.normal(1.5, 1, (200, 8)), bandwidth)
    assert same < 0.05 < 0.25 < shifted


def test_reference_bins_are_merged_to_at_least_a_tenth_of_the_reference_each() -> None:
    from loraswap.service.drift.reference import coarsen

    binned = coarsen([0, 1, 2, 3, 4, 5], [50, 1, 1, 1, 47])
    assert binned.edges == [0, 1, 5] and binned.counts == [50, 50]
    assert len(coarsen(list(range(21)), [5.0] * 20).counts) == 10
