"""Classification metrics: the seeds' hand-computed demo, unexpected predictions, plot."""

from __future__ import annotations

import json

import pytest

from tunesmith.evaluation.classification import (
    classification_metrics,
    most_confused,
    plot_confusion,
)
from tunesmith.utils.errors import DataError

# the seeds' MultiMetricEvaluator demo (chapter 28, G1/G2) with string labels
Y_TRUE = ["neg", "pos", "neg", "pos", "pos", "neg", "pos", "neg", "pos", "pos"]
Y_PRED = ["neg", "pos", "neg", "neg", "pos", "neg", "pos", "pos", "pos", "pos"]


def test_seed_demo_values():
    r = classification_metrics(Y_TRUE, Y_PRED)
    assert r["accuracy"] == pytest.approx(0.8)
    assert r["labels"] == ["neg", "pos"]
    assert r["confusion_matrix"] == [[3, 1], [1, 5]]
    assert r["per_class"]["neg"]["precision"] == pytest.approx(0.75)
    assert r["per_class"]["neg"]["recall"] == pytest.approx(0.75)
    assert r["per_class"]["pos"]["f1"] == pytest.approx(5 / 6)
    assert r["per_class"]["pos"]["support"] == 6
    for key in ("precision_weighted", "recall_weighted", "f1_weighted"):
        assert r[key] == pytest.approx(0.8)
    # macro: mean of 0.75 and 5/6
    assert r["f1_macro"] == pytest.approx((0.75 + 5 / 6) / 2)
    json.dumps(r)  # plain Python types: eval.json takes it as is


def test_prediction_outside_labels_counts_as_wrong_and_is_kept():
    r = classification_metrics(
        ["正面", "负面", "正面"], ["正面", "不确定", "负面"], labels=["正面", "负面"]
    )
    assert r["labels"] == ["正面", "负面", "不确定"]
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert r["unexpected_predictions"] == 1
    assert r["accuracy"] == pytest.approx(1 / 3)
    assert r["per_class"]["负面"]["recall"] == 0.0
    assert set(r["per_class"]) == {"正面", "负面"}  # macro averages over declared labels only
    assert r["recall_macro"] == pytest.approx((0.5 + 0.0) / 2)


def test_most_confused_orders_by_count():
    y_true = ["a"] * 5 + ["b"] * 4 + ["c"] * 3
    y_pred = [*"bbbca", *"abbb", *"aac"]
    r = classification_metrics(y_true, y_pred)
    assert most_confused(r, n=2) == [("a", "b", 3), ("c", "a", 2)]
    assert len(most_confused(r, n=10)) == 4  # a->b, a->c, b->a, c->a; zero cells left out


def test_plot_confusion_writes_png(tmp_path):
    r = classification_metrics(Y_TRUE, Y_PRED)
    path = plot_confusion(r, tmp_path / "plots" / "confusion.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input():
    with pytest.raises(DataError, match="2 gold labels but 1 predictions"):
        classification_metrics(["a", "b"], ["a"])
    with pytest.raises(DataError, match=r"gold labels \['z'\]"):
        classification_metrics(["z"], ["a"], labels=["a", "b"])
    with pytest.raises(DataError, match="empty"):
        classification_metrics([], [])
