"""Paired bootstrap: hand-checked means, coverage of the true difference, p-values."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.evaluation.stats import paired_bootstrap
from tunesmith.utils.errors import ConfigError, DataError


def test_means_and_diff_are_exact():
    r = paired_bootstrap([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 5.0, 4.0], n_resamples=500)
    assert (r["mean_a"], r["mean_b"], r["diff"], r["n"]) == (2.5, 3.25, 0.75, 4)
    assert r["ci_low"] <= r["diff"] <= r["ci_high"]
    # every item's delta is >= 0, so no resample can have a negative mean difference
    assert r["ci_low"] >= 0


def test_same_seed_same_result_and_constant_shift_has_zero_width():
    a = list(np.linspace(0, 1, 30))
    assert paired_bootstrap(a, a[::-1], seed=3) == paired_bootstrap(a, a[::-1], seed=3)
    shifted = paired_bootstrap(a, [x + 0.2 for x in a])
    assert shifted["ci_low"] == pytest.approx(0.2) and shifted["ci_high"] == pytest.approx(0.2)
    assert shifted["p_value"] == 0.0


def test_interval_covers_true_difference_near_nominal_rate():
    rng = np.random.default_rng(1)
    true_diff, covered = 0.3, 0
    for rep in range(100):
        quality = rng.normal(0, 1, 80)  # item difficulty shared by both systems: paired data
        a = quality + rng.normal(0, 1, 80)
        b = quality + true_diff + rng.normal(0, 1, 80)
        r = paired_bootstrap(list(a), list(b), n_resamples=1000, seed=rep)
        covered += r["ci_low"] <= true_diff <= r["ci_high"]
    assert 88 <= covered <= 100  # nominal 95; percentile bootstrap runs slightly under


def test_p_value_small_for_real_shift_and_large_for_none():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, 200)
    shifted = paired_bootstrap(list(a), list(a + 0.5 + rng.normal(0, 0.5, 200)))
    assert shifted["p_value"] < 0.01 and shifted["ci_low"] > 0
    p_values = [
        paired_bootstrap(list(a), list(a + rng.normal(0, 0.5, 200)), seed=i)["p_value"]
        for i in range(20)
    ]
    assert np.median(p_values) > 0.2  # under no shift p is roughly uniform on 0..1
    assert sum(p < 0.05 for p in p_values) <= 3


def test_bad_input():
    with pytest.raises(DataError, match="3 vs 2"):
        paired_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(DataError, match="at least one item"):
        paired_bootstrap([], [])
    with pytest.raises(ConfigError, match="confidence"):
        paired_bootstrap([1], [2], confidence=95)
