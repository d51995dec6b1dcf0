"""Error analysis on hand-made items: worst examples, length buckets, groups, confused pairs."""

from __future__ import annotations

from tunesmith.evaluation.errors import (
    analyze_errors,
    by_group,
    by_length,
    length_bucket_of,
    worst_indices,
)


def test_worst_indices_follow_the_metric_direction_and_skip_missing():
    scores = [0.5, None, 0.1, 0.9, 0.1]
    assert worst_indices(scores, 2) == [2, 4]  # ties keep item order
    assert worst_indices(scores, 2, higher_better=False) == [3, 0]  # e.g. nll: largest is worst
    assert worst_indices(scores, 10) == [2, 4, 0, 3]


def test_quantile_length_buckets_by_hand():
    # quantiles of 1..8 at 0, .25, .5, .75, 1 are 1, 2.75, 4.5, 6.25, 8
    assert length_bucket_of([1, 2, 3, 4, 5, 6, 7, 8], 4) == [0, 0, 1, 1, 2, 2, 3, 3]
    # equal lengths never straddle buckets (quantiles 5, 5, 5, 6, 9 leave two buckets)
    assert length_bucket_of([5, 5, 5, 9], 4) == [0, 0, 0, 1]
    assert length_bucket_of([3, 3], 4) == [0, 0]


def test_length_buckets_report_the_mean_score_inside():
    lengths = [10, 20, 30, 40]
    rows = by_length(lengths, [1.0, 0.0, 0.5, None], 2)  # edges 10, 25, 40
    assert [r["bucket"] for r in rows] == ["10-20", "30-40"]
    assert [r["mean"] for r in rows] == [0.5, 0.5]
    assert [r["n"] for r in rows] == [2, 1]


def test_groups_average_per_key():
    groups = by_group(["math", "chat", "math", None], [1.0, 0.0, 0.0, 1.0])
    assert groups == {"chat": {"n": 1, "mean": 0.0}, "math": {"n": 2, "mean": 0.5}}


def test_analyze_errors_puts_it_together():
    items = [
        {"id": i, "prompt": f"q{i}", "reference": f"r{i}", "length": n, "category": c}
        for i, (n, c) in enumerate([(5, "a"), (50, "b"), (6, "a"), (60, "b")])
    ]
    scores = {"exact_match": [1.0, 0.0, 1.0, 0.0], "nll": [0.5, 3.0, 0.7, 2.0], "x": [None] * 4}
    report = analyze_errors(
        items,
        ["p0", "p1", "p2", "p3"],
        scores,
        worst_n=1,
        length_buckets=2,
        confused=[("pos", "neg", 3)],
    )
    assert report["worst"]["exact_match"][0]["id"] == 1
    assert report["worst"]["nll"][0] == {
        "id": 1,
        "prompt": "q1",
        "reference": "r1",
        "category": "b",
        "label": None,
        "source": None,
        "prediction": "p1",
        "score": 3.0,
    }
    assert "x" not in report["worst"]  # a metric no item has is left out
    assert [r["mean"] for r in report["by_length"]["exact_match"]] == [1.0, 0.0]
    assert report["by_category"]["exact_match"] == {
        "a": {"n": 2, "mean": 1.0},
        "b": {"n": 2, "mean": 0.0},
    }
    assert report["by_label"] == {} and report["by_source"] == {}
    assert report["confused_pairs"] == [{"true": "pos", "predicted": "neg", "count": 3}]
