"""LLM-as-judge: prompts, parsing of messy judge outputs, judging through a fake client."""

from __future__ import annotations

import pytest

from tunesmith.evaluation.judge import (
    RUBRIC,
    judge_pairwise,
    judge_rubric,
    pairwise_messages,
    parse_pairwise,
    parse_rubric,
    rubric_messages,
)
from tunesmith.utils.llm import ChatClient

S8797 = dict(zip(RUBRIC, (8.0, 7.0, 9.0, 7.0), strict=True))

PARSEABLE = [
    '{"accuracy": 8, "completeness": 7, "fluency": 9, "relevance": 7, "reason": "ok"}',
    'Here is my evaluation:\n```json\n{"Accuracy": "8/10", "Completeness": 7, "Fluency": 9, '
    '"Relevance": "7"}\n```\nLet me know if you need more.',
    '{"accuracy": {"score": 8, "reason": "right"}, "completeness": {"score": 7}, '
    '"fluency": {"score": 9}, "relevance": {"score": 7}}',
    "Accuracy: 8/10\nCompleteness: 7/10\nFluency: 9/10\nRelevance: 7/10\nThe answer is complete.",
    "**Accuracy**: 8\n**Completeness**: 7\n**Fluency**: 9\n**Relevance**: 7",
    "- Accuracy - 8 out of 10\n- Completeness - 7 out of 10\n- Fluency - 9 out of 10\n"
    "- Relevance - 7 out of 10",
    "| Criterion | Score |\n|---|---|\n| Accuracy | 8 |\n| Completeness | 7 |\n| Fluency | 9 |\n"
    "| Relevance | 7 |",
    "Accuracy (1-10): 8, Completeness (1-10): 7, Fluency (1-10): 9, Relevance (1-10): 7",
    "accuracy=8; completeness=7; fluency=9; relevance=7",
    "Accuracy (is it correct?): 8. Completeness: 7. Fluency: 9. Relevance: 7.",
    "Accuracy: 4/5, Completeness: 3.5/5, Fluency: 4.5/5, Relevance: 3.5/5",  # rescaled to /10
    # full-width digits
    "准确性：８分\n完整性：７分\n流畅性：９分\n相关性：７分\n理由：回答基本正确。",
    "准确性：八分；完整性：七分；流畅性：九分；相关性：七分",
    # 一般 / 十分 are not scores
    "准确性一般，8分；完整性：7分；流畅性十分好，9分；相关性：7分",
    "评分如下：\n1. 准确性（1-10）：8\n2. 完整性（1-10）：7\n"
    "3. 流畅性（1-10）：9\n4. 相关性（1-10）：7",
    "Accuracy: 8\nCompleteness: 7\nFluency: 9\nRelevance: 7\n\nOverall, accuracy: 8 is fair.",
]
UNPARSEABLE = [
    "",
    "I think this answer is pretty good. 8/10",  # one overall score: criteria unknown
    "Accuracy: 8 Completeness: 7 Fluency: 9",  # relevance missing
    "Accuracy: 85, Completeness: 7, Fluency: 9, Relevance: 7",  # out of range
    "Accuracy: 0, Completeness: 7, Fluency: 9, Relevance: 7",  # below the scale
    "Accuracy: 7. Completeness: 7. Fluency: 9. Relevance: 7. On reflection, Accuracy: 9.",
    "Accuracy: N/A, Completeness: 7, Fluency: 9, Relevance: 7",
    "Accuracy: 7-8, Completeness: 7, Fluency: 9, Relevance: 7",  # a range, not a score
    '{"accuracy": "high", "completeness": 7, "fluency": 9, "relevance": 7}',
    "As an AI, I cannot rate this answer.",
    "准确性：很好；完整性：较好；流畅性：好；相关性：好",
]


@pytest.mark.parametrize("text", PARSEABLE)
def test_parse_rubric_messy_outputs(text):
    assert parse_rubric(text) == S8797


def test_parse_rubric_rescales_other_explicit_scale():
    assert parse_rubric("Accuracy: 4/5, Completeness: 3/5, Fluency: 5/5, Relevance: 1/5") == {
        "accuracy": 8.0,
        "completeness": 6.0,
        "fluency": 10.0,
        "relevance": 2.0,
    }


@pytest.mark.parametrize("text", UNPARSEABLE)
def test_parse_rubric_never_guesses(text):
    assert parse_rubric(text) is None


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("[[A]]", "A"),
        ("After comparing both, my final verdict is [[B]].", "B"),
        ("Both are fine but A is more precise.\n\n[[A]]", "A"),
        ("[[C]]", "tie"),  # MT-Bench's tie
        ("Verdict: tie", "tie"),
        ("Winner: Assistant B", "B"),
        ("The better answer is B.", "B"),
        ('{"winner": "B", "reason": "more complete"}', "B"),
        ("Answer A is better because it is more complete.", "A"),
        ("Response B is more concise, but A is better overall. Final verdict: A", "A"),
        ("A", "A"),
        ("**B**", "B"),
        ("回答B更好，因为更完整。", "B"),
        ("结论：A", "A"),
        ("两者不相上下。", "tie"),
        ("Both answers are equally good.", "tie"),
        # a judge that repeats our instruction before answering
        (pairwise_messages("q", "x", "y")[1]["content"].splitlines()[-1] + "\n[[B]]", "B"),
        ("", None),
        ("I cannot decide.", None),
        ("My choice is a hard one; both have merits.", None),  # lower-case "a" is an article
        ("[[A]] ... actually, on second thought, [[B]]", None),  # contradictory
    ],
)
def test_parse_pairwise(text, verdict):
    assert parse_pairwise(text) == verdict


def test_messages_carry_question_answer_and_reference_in_the_question_language():
    en = rubric_messages("What is 2+2?", "4", reference="Four")
    assert [m["role"] for m in en] == ["system", "user"]
    assert "What is 2+2?" in en[1]["content"] and "Reference answer:\nFour" in en[1]["content"]
    assert all(c in en[1]["content"] for c in RUBRIC)
    zh = rubric_messages("二加二等于几？", "四")
    assert "准确性" in zh[1]["content"] and "参考答案" not in zh[1]["content"]
    pair = pairwise_messages("Q?", "first", "second")[1]["content"]
    assert pair.index("[Answer A]\nfirst") < pair.index("[Answer B]\nsecond")


class FakeJudge:
    """Answers from a function of the prompt; records what it was asked."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def chat(self, conversations, max_new_tokens=256, temperature=0.7):
        self.calls.append((len(conversations), temperature))
        return [self.answer(c[-1]["content"]) for c in conversations]


def test_judge_rubric_means_skip_unparseable():
    replies = {
        "q1": "Accuracy: 8\nCompleteness: 6\nFluency: 10\nRelevance: 8",
        "q2": "great!",
        "q3": '{"accuracy": 6, "completeness": 6, "fluency": 8, "relevance": 4}',
    }
    judge = FakeJudge(lambda prompt: next(v for k, v in replies.items() if k in prompt))
    assert isinstance(judge, ChatClient)
    items = [{"question": q, "answer": "x"} for q in ("q1", "q2", "q3")]
    result = judge_rubric(judge, items)
    assert judge.calls == [(3, 0.0)]  # one batch, greedy
    assert result["unparseable"] == 1 and result["n"] == 3
    assert result["items"][1] == {"scores": None, "overall": None, "raw": "great!"}
    assert result["items"][0]["overall"] == 8.0
    assert result["means"] == {
        "accuracy": 7.0,
        "completeness": 6.0,
        "fluency": 9.0,
        "relevance": 6.0,
        "overall": 7.0,
    }


def _answer_by_content(prompt: str) -> str:
    """Prefers the answer containing "good"; "biased" questions always say [[A]]."""
    if "biased" in prompt:
        return "[[A]]"
    if "unclear" in prompt:
        return "hmm"
    first = prompt.split("[Answer A]")[1].split("[End of answer A]")[0]
    return "[[A]]" if "good" in first else "[[B]]"


def test_judge_pairwise_swaps_and_maps_back_verdicts():
    judge = FakeJudge(_answer_by_content)
    items = [
        {"question": "q1", "answer_a": "bad", "answer_b": "good"},
        {"question": "q2", "answer_a": "good", "answer_b": "bad"},
        {"question": "q3 biased", "answer_a": "one", "answer_b": "two"},
        {"question": "q4 unclear", "answer_a": "one", "answer_b": "two"},
    ]
    result = judge_pairwise(judge, items)
    assert judge.calls == [(8, 0.0)]  # both orders in one batch
    verdicts = [row["verdict"] for row in result["items"]]
    assert verdicts == ["B", "A", "tie", None]
    assert result["items"][2]["verdicts"] == ["A", "B"]  # position bias -> tie
    assert result["items"][2]["consistent"] is False
    assert (result["a_wins"], result["b_wins"], result["ties"]) == (1, 1, 1)
    assert result["inconsistent"] == 1 and result["unparseable"] == 1
    assert result["b_win_rate"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert [row["score_b"] for row in result["items"]] == [1.0, 0.0, 0.5, None]


def test_judge_pairwise_without_swap_trusts_single_order():
    judge = FakeJudge(_answer_by_content)
    items = [{"question": "q biased", "answer_a": "one", "answer_b": "two"}]
    result = judge_pairwise(judge, items, swap=False)
    assert judge.calls == [(1, 0.0)]
    assert result["items"][0]["verdict"] == "A" and result["a_wins"] == 1
