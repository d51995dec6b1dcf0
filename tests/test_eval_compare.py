"""Base vs tuned comparison on synthetic per-item scores."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.evaluation.compare import compare_scores, headline, side_by_side


def test_a_constant_gain_is_a_win_everywhere_with_a_point_interval():
    a = {"chrf": [10.0, 20.0, 30.0, 40.0]}
    b = {"chrf": [15.0, 25.0, 35.0, 45.0]}
    row = compare_scores(a, b, n_resamples=200)["chrf"]
    assert row["diff"] == pytest.approx(5.0)
    assert row["ci_low"] == pytest.approx(5.0) and row["ci_high"] == pytest.approx(5.0)
    assert (row["wins"], row["ties"], row["losses"]) == (4, 0, 0)
    assert row["significant"] and row["mean_a"] == pytest.approx(25.0)


def test_the_same_model_twice_is_all_ties_and_zero_difference():
    scores = {"exact_match": [1.0, 0.0, 1.0, 1.0, 0.0]}
    row = compare_scores(scores, scores, n_resamples=200)["exact_match"]
    assert row["diff"] == 0.0 and row["ci_low"] <= 0.0 <= row["ci_high"]
    assert (row["wins"], row["ties"], row["losses"]) == (0, 5, 0)
    assert not row["significant"]


def test_lower_is_better_metrics_count_a_drop_as_a_win():
    row = compare_scores({"nll": [2.0, 3.0, 1.0]}, {"nll": [1.5, 3.2, 1.0]}, n_resamples=200)["nll"]
    assert (row["wins"], row["ties"], row["losses"]) == (1, 1, 1)
    assert row["diff"] == pytest.approx(-0.1) and not row["higher_is_better"]


def test_items_a_metric_does_not_apply_to_are_left_out():
    a = {"chrf": [1.0, None, 3.0], "only_a": [1.0, 1.0, 1.0]}
    b = {"chrf": [2.0, 5.0, None], "only_b": [0.0, 0.0, 0.0]}
    result = compare_scores(a, b, n_resamples=200)
    assert set(result) == {"chrf"}
    assert result["chrf"]["n"] == 1 and result["chrf"]["diff"] == 1.0


def test_the_interval_covers_the_true_difference_on_noisy_pairs():
    rng = np.random.default_rng(1)
    base = rng.normal(50, 10, 400)
    tuned = base + 3.0 + rng.normal(0, 5, 400)  # true mean gain: 3
    row = compare_scores({"m": list(base)}, {"m": list(tuned)}, n_resamples=1000)["m"]
    assert row["ci_low"] < 3.0 < row["ci_high"]
    assert row["ci_low"] > 0 and row["p_value"] < 0.01
    assert row["ci_high"] - row["ci_low"] < 2.0  # ~ 2 x 1.96 x 5 / sqrt(400)


def test_side_by_side_rows_and_headline():
    rows = side_by_side(["q1", "q2"], ["r1", None], ["a1", "a2"], ["b1", "b2"], [0.0, 1.0])
    assert rows[1] == {
        "id": 1,
        "prompt": "q2",
        "reference": None,
        "a": "a2",
        "b": "b2",
        "score_a": 1.0,
        "score_b": None,
    }
    assert headline({"bleu": {}, "chrf": {}}, ("chrf", "bleu")) == "chrf"
    assert headline({"nll": {}}, ("chrf",)) == "nll"
    assert headline({}, ("chrf",)) is None
