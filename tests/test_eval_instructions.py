"""Instruction-following rule checks, one per constraint type, English and Chinese."""

from __future__ import annotations

import pytest

from tunesmith.evaluation.instructions import (
    CONSTRAINT_TYPES,
    check_constraints,
    count_items,
    summarize_by_type,
)
from tunesmith.utils.errors import DataError


def passed(response: str, kind: str, value=None) -> bool:
    [result] = check_constraints(response, [{"type": kind, "value": value}])
    assert result["type"] == kind and result["detail"]
    return result["passed"]


def test_json_accepts_plain_and_fenced_and_rejects_broken():
    assert passed('{"name": "Ada", "age": 36}', "json")
    assert passed('```json\n{"a": [1, 2]}\n```', "json")
    assert not passed("{'name': 'Ada'}", "json")  # single quotes are not JSON
    assert not passed('Sure! {"a": 1}', "json")
    [r] = check_constraints('{"a": 1,}', [{"type": "json"}])
    assert "line 1" in r["detail"]


def test_word_bounds_count_chinese_characters_as_words():
    assert passed("one two three", "min_words", 3)
    assert not passed("one two", "min_words", 3)
    assert passed("我爱北京", "max_words", 4)  # 4 characters
    assert not passed("我爱北京 today", "max_words", 4)  # 4 + 1


def test_list_items_bullets_and_numbers():
    text = (
        "Intro:\n- apples\n* pears\n1. one\n2) two\n3、三\n（4）四\n"
        "**bold** not an item\n-5 degrees"
    )
    assert count_items(text) == 6
    assert passed(text, "min_items", 6) and not passed(text, "max_items", 5)


def test_language():
    assert passed("这是一个用中文写的回答，包含 Python 一词。", "language", "zh")
    assert not passed("This answer is in English.", "language", "zh")
    assert passed("This answer is in English, about 北京.", "language", "en")
    assert not passed("   ", "language", "en")


def test_keywords_whole_words_for_english_and_substrings_for_chinese():
    assert passed("Use the Transformer model.", "include_keywords", ["transformer", "model"])
    assert not passed("A category of things.", "include_keywords", ["cat"])
    assert passed("微调大模型需要数据。", "include_keywords", ["模型", "数据"])
    assert not passed("You idiot.", "exclude_words", ["idiot"])
    assert passed("Classic literature.", "exclude_words", ["ass"])
    [r] = check_constraints("It is 笨蛋", [{"type": "exclude_words", "value": ["笨蛋", "idiot"]}])
    assert r["detail"] == "contains ['笨蛋']"


def test_chars_and_edges():
    assert passed("  abcde  ", "max_chars", 5) and not passed("abcdef", "max_chars", 5)
    assert passed("  Dear Sir, hello.", "starts_with", "dear sir")
    assert passed("谢谢。\n", "ends_with", "谢谢。")
    assert not passed("Thanks!", "ends_with", "thanks.")


def test_summarize_by_type():
    constraints = [{"type": "max_words", "value": 3}, {"type": "include_keywords", "value": ["a"]}]
    results = [check_constraints(r, constraints) for r in ("a b", "a b c d", "x")]
    assert summarize_by_type(results) == {
        "max_words": {"passed": 2, "total": 3, "rate": pytest.approx(2 / 3)},
        "include_keywords": {"passed": 2, "total": 3, "rate": pytest.approx(2 / 3)},
    }
    assert len(CONSTRAINT_TYPES) == 11


def test_bad_constraints_name_the_problem():
    with pytest.raises(DataError, match="unknown constraint type 'max_sentences'"):
        check_constraints("x", [{"type": "max_sentences", "value": 2}])
    with pytest.raises(DataError, match="needs a 'type'"):
        check_constraints("x", [{"value": 2}])
    with pytest.raises(DataError, match="max_words: 'value' must be a non-negative integer"):
        check_constraints("x", [{"type": "max_words", "value": "ten"}])
    with pytest.raises(DataError, match="language: value must be 'en' or 'zh'"):
        check_constraints("x", [{"type": "language", "value": "fr"}])
