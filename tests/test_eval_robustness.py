"""Perturbations (deterministic, each changes what it claims to) and consistency scores."""

from __future__ import annotations

import re

import pytest

from tunesmith.evaluation.robustness import (
    PERTURBATIONS,
    consistency,
    perturb,
    robustness_summary,
)
from tunesmith.utils.errors import ConfigError, DataError

EN = "Please explain how a quick sort works, in simple words."
ZH = "请解释一下快速排序的方法，为什么它很快？"


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_deterministic_per_seed(kind):
    text = ZH if kind == "zh_noise" else EN
    assert perturb(text, kind, seed=7) == perturb(text, kind, seed=7)
    assert perturb(text, kind, seed=7) != text
    outputs = {perturb(text, kind, seed=s) for s in range(10)}
    assert len(outputs) > 1 or kind == "synonym"  # few synonym spots: seeds may agree


def test_each_kind_changes_only_its_aspect():
    assert perturb(EN, "case", 0).lower() == EN.lower()
    assert perturb(EN, "whitespace", 0).split() == EN.split()
    assert re.sub(r"\s", "", perturb(ZH, "whitespace", 0)) == ZH
    dropped = perturb(EN, "punctuation", 0)
    assert re.sub(r"[,.]", "", dropped) == re.sub(r"[,.]", "", EN) and dropped != EN
    assert perturb("hello world", "punctuation", 0) in {"hello, world", "hello world,"}
    typo = perturb(EN, "typo", 0)
    assert len(typo.split()) == len(EN.split()) and typo != EN
    assert perturb(EN, "zh_noise", 0) == EN  # nothing Chinese to disturb
    noisy = perturb(ZH, "zh_noise", 0)
    assert noisy != ZH and "，" in noisy


def test_synonym_swaps_table_words_and_keeps_capitals():
    assert perturb("Explain it.", "synonym", 0) == "Describe it."
    assert perturb("为什么天是蓝的", "synonym", 0) == "为何天是蓝的"
    assert perturb("no table word here", "synonym", 0) == "no table word here"


def test_consistency_text_and_label():
    scores = consistency(
        ["the cat sat on the mat", "same", "完全不同"], ["the cat sat on a mat", " same ", "abc"]
    )
    assert 0.5 < scores[0] < 1.0
    assert scores[1] == 1.0
    assert scores[2] == 0.0
    assert consistency(["pos", "neg", "neg"], ["pos", "pos", "neg "], mode="label") == [
        1.0,
        0.0,
        1.0,
    ]


def test_summary_and_errors():
    summary = robustness_summary({"typo": [1.0, 0.5, 0.75], "case": []})
    assert summary["typo"] == {"mean": 0.75, "min": 0.5, "n": 3}
    assert summary["case"] == {"mean": None, "min": None, "n": 0}
    with pytest.raises(ConfigError, match="unknown perturbation 'emoji'"):
        perturb("x", "emoji", 0)
    with pytest.raises(ConfigError, match="mode 'exact'"):
        consistency(["a"], ["a"], mode="exact")
    with pytest.raises(DataError, match="2 original outputs but 1"):
        consistency(["a", "b"], ["a"])
