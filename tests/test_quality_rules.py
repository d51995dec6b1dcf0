"""Per-record quality scoring (tunesmith.data.quality.rules)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tunesmith.data.quality.rules import (
    ISSUES,
    QualityRules,
    issue_message,
    score_record,
    score_text,
)

# The seed monitor demo (chapter 28, E1): text, expected score, passed at threshold 75, issues.
SEED_DEMO = [
    ("这是一个高质量的文本样本，内容丰富且有意义。", 100, True, []),
    ("短文本", 70, False, ["too_short"]),
    ("!!!@@@###特殊字符过多的文本样本###@@@!!!", 75, True, ["special_chars"]),
    ("a" * 31, 65, False, ["repeated_chars"]),
    ("正常的文本样本，质量应该是合格的。", 100, True, []),
    ("", 30, False, ["too_short", "no_alnum"]),  # the seed divides by zero here
    ("另一个正常的高质量文本，用于测试监控系统的功能。", 100, True, []),
]


def chat(prompt: str, response: str, system: str | None = None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


GOOD_PROMPT = "What is the capital of France?"
GOOD_RESPONSE = "The capital of France is Paris."


@pytest.mark.parametrize(("text", "score", "passed", "issues"), SEED_DEMO)
def test_seed_demo_texts_score_as_the_seed_table(text, score, passed, issues):
    result = score_text(text, QualityRules(pass_score=75))
    assert (result.score, result.passed, result.issues) == (score, passed, issues)


def test_seed_boundaries_are_strict_like_the_seed():
    rules = QualityRules()
    assert score_text("abcde", rules).issues == []  # len 5 is not < 5
    assert score_text("ab" * 500, rules).issues == []  # len 1000 is not > 1000
    assert score_text("ab" * 500 + "c", rules).issues == ["too_long"]
    assert score_text("ab" * 500 + "c", rules).score == 80  # passes exactly at pass_score


def test_long_run_is_penalised_once_even_when_it_also_dominates():
    rules = QualityRules()
    run = "A good answer, explained clearly. " + "!" * 25  # 25 of 59 characters
    assert score_text(run, rules).issues == ["special_chars", "repeat_run"]
    assert score_text(run, rules).score == 100 - 25 - 15
    assert score_text("x" * 30, rules).issues == ["repeated_chars"]  # not also repeat_run


def test_indentation_is_not_repetition():
    code = "def f(x):\n" + " " * 40 + "return x + 1\n" + "\n" * 30 + "print(f(2))"
    assert score_text(code, QualityRules()).issues == []


def test_control_characters_and_pii_are_flagged():
    rules = QualityRules()
    result = score_text("hello\x00 world, a fine text", rules)
    assert (result.issues, result.score, result.passed) == (["control_chars"], 85, True)
    result = score_text("mail me at alice@example.com today", rules)
    assert (result.issues, result.score, result.passed) == (["pii"], 75, False)
    assert [h.kind for h in result.stats.pii] == ["email"]


def test_pii_check_can_be_narrowed_or_turned_off():
    text = "call 13812345678 or mail alice@example.com"
    assert score_text(text, QualityRules(pii_kinds=[])).issues == []
    only_email = score_text(text, QualityRules(pii_kinds=["email"]))
    assert [h.kind for h in only_email.stats.pii] == ["email"]


def test_good_conversation_scores_100():
    result = score_record(chat(GOOD_PROMPT, GOOD_RESPONSE, system="Be brief."), QualityRules())
    assert (result.score, result.passed, result.issues) == (100, True, [])


@pytest.mark.parametrize(
    ("prompt", "response", "issues", "score"),
    [
        ("Hi?", GOOD_RESPONSE, ["prompt_too_short"], 70),
        ("   Hi?    ", GOOD_RESPONSE, ["prompt_too_short"], 70),  # whitespace does not count
        (GOOD_PROMPT, "Paris.", ["response_too_short"], 70),
        (GOOD_PROMPT, "Paris " * 2000, ["response_too_long"], 80),
        (GOOD_PROMPT, "   ", ["response_empty"], 0),
        ("", GOOD_RESPONSE, ["prompt_empty"], 0),
        (GOOD_PROMPT, "?!?!?!?!?!?!", ["response_no_alnum", "response_special_chars"], 35),
        (GOOD_PROMPT, "zzzzzzzzzzzzzzzzzzzz ok", ["response_repeated_chars"], 65),
    ],
)
def test_conversation_rules(prompt, response, issues, score):
    result = score_record(chat(prompt, response), QualityRules())
    assert (result.issues, result.score) == (issues, score)
    assert result.passed is (score >= 80)


def test_seed_length_rules_apply_to_the_response_not_the_text_rules():
    # 1500 characters is "too long" for a plain text (> 1000) but fine for a response (<= 10000).
    response = "The answer, explained at length. " * 45
    assert score_record(chat(GOOD_PROMPT, response), QualityRules()).issues == []
    assert score_text(response, QualityRules()).issues == ["too_long"]


def test_prompt_is_not_judged_on_shape_but_pii_anywhere_counts():
    rules = QualityRules()
    shouty = score_record(chat("?!?!?! what is this ?!?!?!", GOOD_RESPONSE), rules)
    assert shouty.issues == []
    leaked = score_record(chat("My phone is 13812345678, call me.", GOOD_RESPONSE), rules)
    assert leaked.issues == ["pii"]
    system = score_record(chat(GOOD_PROMPT, GOOD_RESPONSE, system="ops: bob@corp.com"), rules)
    assert system.issues == ["pii"]


def test_multi_turn_joins_user_and_assistant_turns():
    messages = chat("Hello there", "Hi! How can I help?") + chat("And you?", "Fine.")
    assert score_record(messages, QualityRules()).issues == []  # joined response is long enough
    messages[-1]["content"] = " "
    assert score_record(messages, QualityRules()).issues == ["response_empty"]


def test_thresholds_and_penalties_are_configurable():
    rules = QualityRules(min_response_chars=50, penalty_too_short=5, pass_score=90)
    result = score_record(chat(GOOD_PROMPT, GOOD_RESPONSE), rules)
    assert (result.issues, result.score, result.passed) == (["response_too_short"], 95, True)
    lenient = QualityRules(pass_score=70)
    assert score_text("mail me at alice@example.com today", lenient).passed


def test_rules_reject_typos_unknown_pii_kinds_and_crossed_bounds():
    with pytest.raises(ValidationError, match="pass_scor"):
        QualityRules(pass_scor=70)
    with pytest.raises(ValidationError, match="unknown PII kind"):
        QualityRules(pii_kinds=["passport"])
    with pytest.raises(ValidationError, match="max_response_chars"):
        QualityRules(min_response_chars=100, max_response_chars=50)
    with pytest.raises(ValidationError):
        QualityRules(pass_score=101)


def test_every_issue_has_a_message_and_a_penalty():
    rules = QualityRules()
    for code in ISSUES:
        assert issue_message(code) != code
    # each issue a scorer can produce costs points (except the monitor's "malformed": score 0)
    scored = [c for c in ISSUES if c != "malformed"]
    from tunesmith.data.quality.rules import _penalty

    assert all(_penalty(code, rules) > 0 for code in scored)
    assert score_text("", rules).messages == ["text is too short", "text has no letters or digits"]
