"""LLM-as-judge: rubric scores (accuracy, completeness, fluency, relevance; 1-10, as in the
seeds' AutoEvaluator) and pairwise preference with both answer orders asked.

Judges answer in messy ways: JSON, JSON inside a code fence, "Accuracy: 8/10", markdown tables
and bold, Chinese labels with full-width digits. The parsers read all of these, and return None
when a judgment is missing, out of range or contradicts itself: such judgments are counted as
unparseable, never guessed.
"""

from __future__ import annotations

import json
import re
import unicodedata

from tunesmith.evaluation.metrics import detect_lang
from tunesmith.utils.llm import ChatClient

RUBRIC = ("accuracy", "completeness", "fluency", "relevance")
# Nouns only: adjectives ("complete", "accurate") occur in the judge's reasons and would steal
# the next criterion's number. Short Chinese forms count only right before a colon.
_LABELS = {
    "accuracy": ("accuracy", "correctness", "准确性", "准确度", "正确性", "准确(?=:)"),
    "completeness": ("completeness", "完整性", "完整度", "完整(?=:)"),
    "fluency": ("fluency", "流畅性", "流畅度", "流畅(?=:)", "通顺(?=:)"),
    "relevance": ("relevance", "relevancy", "相关性", "相关度", "相关(?=:)", "切题(?=:)"),
}
_ANY_LABEL = "|".join(label for labels in _LABELS.values() for label in labels)
_ZH_NUMBERS = {ch: i for i, ch in enumerate("一二三四五六七八九十", 1)} | {"两": 2}
# a Chinese numeral is a score only as "八分" (not "一般", not "十分高")
_NUMBER = r"(\d+(?:\.\d+)?|[一二两三四五六七八九十](?=\s*分(?![\u4e00-\u9fff])))"
# the rubric's own range ("(1-10)", "1 到 10 分") is not a score
_RANGE = re.compile(r"\(?\b[01]\s*(?:-|–|~|to|至|到)\s*10\b\)?(?:\s*分)?", re.I)
# label, filler (no digit, no line break, no other label), score, optional scale ("/10")
_SCORE_AFTER = (
    rf"(?:(?!{_ANY_LABEL})[^\d\n]){{0,40}}?" + _NUMBER + r"(?!\s*(?:-|–|~|to|至|到)\s*\d)"
    r"(?:\s*(?:/|out of|分?\s*\(?\s*满分)\s*(\d+))?"
)
_RUBRIC_SYSTEM = (
    "You are a strict, impartial judge of answers written by an AI assistant. "
    "You reply with JSON only."
)
_RUBRIC_EN = """Rate the answer to the question below on four criteria, each an integer 1 to 10:
- accuracy: is the answer correct?
- completeness: does it cover the key points?
- fluency: is the language clear and natural?
- relevance: does it stay on the question?

Question:
{question}
{reference}
Answer to rate:
{answer}

Reply with one JSON object and nothing else, for example:
{{"accuracy": 7, "completeness": 6, "fluency": 9, "relevance": 8, "reason": "in one sentence"}}"""
_RUBRIC_ZH = """请评估以下AI回答的质量，按四个标准分别打分（1-10的整数）：
- accuracy（准确性）：回答是否正确
- completeness（完整性）：是否涵盖关键点
- fluency（流畅性）：语言是否通顺
- relevance（相关性）：是否切题

问题：
{question}
{reference}
模型回答：
{answer}

只回复一个JSON对象，不要其他内容，例如：
{{"accuracy": 7, "completeness": 6, "fluency": 9, "relevance": 8, "reason": "一句简短理由"}}"""
_ECHO = (
    "[[A]] if answer A is better, [[B]] if answer B is better, [[tie]] if they are equally good."
)
_PAIRWISE_SYSTEM = (
    "You are an impartial judge comparing two answers written by AI assistants. The order in "
    "which the answers appear must not influence you, nor their length."
)
_PAIRWISE = (
    """Which answer is better: more accurate, complete, fluent and relevant?

Question:
{question}

[Answer A]
{answer_a}
[End of answer A]

[Answer B]
{answer_b}
[End of answer B]

Explain briefly, then give your verdict on the last line, exactly one of:
"""
    + _ECHO
)


def rubric_messages(question: str, answer: str, reference: str | None = None) -> list[dict]:
    """The conversation asking a judge for the four rubric scores as JSON (Chinese for Chinese)."""
    zh = detect_lang([question, answer]) == "zh"
    ref = ""
    if reference:
        ref = f"\n参考答案：\n{reference}\n" if zh else f"\nReference answer:\n{reference}\n"
    template = _RUBRIC_ZH if zh else _RUBRIC_EN
    return [
        {"role": "system", "content": _RUBRIC_SYSTEM},
        {
            "role": "user",
            "content": template.format(question=question, answer=answer, reference=ref),
        },
    ]


def pairwise_messages(question: str, answer_a: str, answer_b: str) -> list[dict]:
    """The conversation asking a judge which of two answers is better ([[A]], [[B]], [[tie]])."""
    prompt = _PAIRWISE.format(question=question, answer_a=answer_a, answer_b=answer_b)
    return [{"role": "system", "content": _PAIRWISE_SYSTEM}, {"role": "user", "content": prompt}]


# --- parsing -------------------------------------------------------------------------------------


def _normalize(text: str) -> str:
    # NFKC: full-width digits, colons and slashes become ASCII; markdown emphasis is noise here
    return re.sub(r"[*_`#]", "", unicodedata.normalize("NFKC", text))


def _number(token: str) -> float:
    return float(_ZH_NUMBERS[token]) if token in _ZH_NUMBERS else float(token)


def _on_scale(value: float, scale: float | None) -> float | None:
    """A score on the 1..10 scale; another explicit scale ("4/5") is converted; else None."""
    if scale:
        if value > scale:
            return None
        value = value * 10 / scale
    return value if 1 <= value <= 10 else None


def _json_objects(text: str) -> list[dict]:
    decoder, found = json.JSONDecoder(), []
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def _json_value(value) -> float | None:
    if isinstance(value, dict):  # {"accuracy": {"score": 8, "reason": ...}}
        value = value.get("score", value.get("value"))
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _on_scale(float(value), None)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*" + _NUMBER + r"\s*(?:(?:/|out of)\s*(\d+))?\s*(?:分)?\s*", value)
        if m:
            return _on_scale(_number(m.group(1)), float(m.group(2)) if m.group(2) else None)
    return None


def _rubric_from_json(text: str) -> dict[str, float] | None:
    for obj in _json_objects(text):
        keys = {_criterion(k): v for k, v in obj.items() if _criterion(k)}
        if set(keys) == set(RUBRIC):
            scores = {c: _json_value(keys[c]) for c in RUBRIC}
            return scores if all(v is not None for v in scores.values()) else None
    return None


def _criterion(key: str) -> str | None:
    key = str(key).strip().lower()
    for criterion, labels in _LABELS.items():
        if key in (label.removesuffix("(?=:)") for label in labels):
            return criterion
    return None


def _rubric_from_text(text: str) -> dict[str, float] | None:
    text = _RANGE.sub(" ", text)
    scores = {}
    for criterion, labels in _LABELS.items():
        pattern = re.compile(rf"(?<![a-z])(?:{'|'.join(labels)})(?![a-z])" + _SCORE_AFTER, re.I)
        values = {
            _on_scale(_number(m.group(1)), float(m.group(2)) if m.group(2) else None)
            for m in pattern.finditer(text)
        }
        if len(values) != 1 or None in values:  # missing, out of range or contradictory
            return None
        scores[criterion] = values.pop()
    return scores


def parse_rubric(text: str) -> dict[str, float] | None:
    """The four rubric scores (1..10) from a judge's reply, or None when they cannot be read
    with certainty (any missing, out of range, or given twice with different values)."""
    text = _normalize(text)
    return _rubric_from_json(text) or _rubric_from_text(text)


# Verdict letters are upper case only: a lower-case "a" is an article ("my choice is a hard one").
_VERDICT = r"(A|B|(?i:tie|draw|equal)|平局|相当|持平)(?![A-Za-z])"
_STRONG = (
    re.compile(r"\[\[\s*(A|B|C|(?i:tie))\s*\]\]"),  # MT-Bench's format, where [[C]] is a tie
    re.compile(
        r"(?i:verdict|winner|better answer|better response|preferred|preference|final answer"
        r"|choice|结论|裁决|胜者|更好的(?:回答|答案)?)\s*(?i:is)?\s*[:=]?\s*"
        r"(?i:answer|response|assistant|回答|答案)?\s*[\[(\"']?" + _VERDICT
    ),
    re.compile(r"\"(?i:winner|verdict|better)\"\s*:\s*\"\s*" + _VERDICT),
)
_WEAK = (
    re.compile(
        r"(?i:answer|response|assistant|output)\s+(A|B)\s+(?i:is|was)\s+"
        r"(?i:clearly\s+|slightly\s+|much\s+)?(?i:better|superior|preferred|the better)"
    ),
    re.compile(r"(A|B)\s*(?:更好|更优|更佳|胜出|较好)"),
    re.compile(r"(?m)^\s*[\[(]?(A|B)[\])]?\s*[.!]?\s*$"),  # a line that is only "A"
    re.compile(
        r"(?i:both (?:answers|responses) are (?:equally )?(?:good|bad|correct)|equally good"
        r"|it'?s a (tie|draw)|两者(?:相当|一样好|不相上下)|不相上下)"
    ),
)


def _verdict(token: str | None) -> str:
    return token if token in ("A", "B") else "tie"


def parse_pairwise(text: str) -> str | None:
    """ "A", "B" or "tie" from a judge's reply; None when absent or contradictory."""
    text = _normalize(text.replace(_ECHO, ""))  # a judge that repeats our instruction
    for tier in (_STRONG, _WEAK):
        verdicts = {_verdict(m.group(1)) for p in tier for m in p.finditer(text)}
        if verdicts:
            return verdicts.pop() if len(verdicts) == 1 else None
    return None


# --- judging -------------------------------------------------------------------------------------


def judge_rubric(
    client: ChatClient, items: list[dict], max_new_tokens: int = 256, temperature: float = 0.0
) -> dict:
    """Score items {"question", "answer", "reference"?} on the rubric.

    Returns per-item scores (None when unparseable) with the judge's raw reply, per-criterion
    means over the parsed items ("overall" is the mean of the four), and the unparseable count.
    """
    conversations = [
        rubric_messages(it["question"], it["answer"], it.get("reference")) for it in items
    ]
    raws = client.chat(conversations, max_new_tokens=max_new_tokens, temperature=temperature)
    rows = []
    for raw in raws:
        scores = parse_rubric(raw)
        overall = sum(scores.values()) / len(scores) if scores else None
        rows.append({"scores": scores, "overall": overall, "raw": raw})
    parsed = [r for r in rows if r["scores"]]
    means = {
        c: (sum(r["scores"][c] for r in parsed) / len(parsed) if parsed else None) for c in RUBRIC
    }
    means["overall"] = sum(r["overall"] for r in parsed) / len(parsed) if parsed else None
    return {"n": len(rows), "items": rows, "means": means, "unparseable": len(rows) - len(parsed)}


_SWAP = {"A": "B", "B": "A", "tie": "tie", None: None}


def judge_pairwise(
    client: ChatClient,
    items: list[dict],
    swap: bool = True,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
) -> dict:
    """Compare items {"question", "answer_a", "answer_b"}; with `swap`, each pair is judged in
    both orders and two verdicts that disagree make a tie (the judge followed the position).

    Per item: verdict ("A", "B", "tie", or None when a judgment was unparseable) and score for
    B (1, 0.5, 0), ready for a paired bootstrap. Totals: a_wins, b_wins, ties, b_win_rate
    (ties count half), inconsistent (order-dependent verdicts) and unparseable items.
    """
    conversations = [
        pairwise_messages(it["question"], it["answer_a"], it["answer_b"]) for it in items
    ]
    if swap:
        conversations += [
            pairwise_messages(it["question"], it["answer_b"], it["answer_a"]) for it in items
        ]
    raws = client.chat(conversations, max_new_tokens=max_new_tokens, temperature=temperature)
    n = len(items)
    rows = []
    for i in range(n):
        verdicts = [parse_pairwise(raws[i])]
        if swap:
            verdicts.append(_SWAP[parse_pairwise(raws[n + i])])  # back to the original labels
        rows.append(_combine(verdicts, raws[i::n] if swap else [raws[i]]))
    counted = [r for r in rows if r["verdict"]]
    tally = {v: sum(r["verdict"] == v for r in counted) for v in ("A", "B", "tie")}
    return {
        "n": n,
        "items": rows,
        "a_wins": tally["A"],
        "b_wins": tally["B"],
        "ties": tally["tie"],
        "b_win_rate": sum(r["score_b"] for r in counted) / len(counted) if counted else None,
        "inconsistent": sum(r["consistent"] is False for r in rows),
        "unparseable": n - len(counted),
    }


def _combine(verdicts: list[str | None], raws: list[str]) -> dict:
    if None in verdicts:
        return {
            "verdict": None,
            "score_b": None,
            "verdicts": verdicts,
            "consistent": None,
            "raw": raws,
        }
    consistent = len(set(verdicts)) == 1
    verdict = verdicts[0] if consistent else "tie"
    score_b = {"A": 0.0, "B": 1.0, "tie": 0.5}[verdict]
    return {
        "verdict": verdict,
        "score_b": score_b,
        "verdicts": verdicts,
        "consistent": consistent,
        "raw": raws,
    }
