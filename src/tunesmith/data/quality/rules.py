"""Score one record or one text out of 100; every threshold and penalty is a QualityRules field.

A score starts at 100 and loses a fixed penalty per issue found (clamped at 0); a record passes
when its score is at least `pass_score`. The text rules are the seed's DataQualityMonitor
(chapter 28) with its empty-string crash fixed; the conversation length rules are the seed's
DataCleaner.check_length (module 5). `inspect`, `clean` and the stream monitor all score here, so
a record gets the same verdict everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunesmith.data.quality.pii import DEFAULT_PII_KINDS, PII_KINDS, PiiHit, find_pii
from tunesmith.data.quality.text import (
    control_char_count,
    longest_repeat_run,
    most_common_char_share,
    special_char_ratio,
)

ISSUES: dict[str, str] = {
    # score_text (seed monitor rules plus three of ours)
    "too_short": "text is too short",
    "too_long": "text is too long",
    "no_alnum": "text has no letters or digits",
    "special_chars": "too many special characters",
    "repeated_chars": "one character makes up too much of the text",
    "repeat_run": "a character repeats many times in a row",
    "control_chars": "contains control characters",
    "pii": "contains personal information (PII)",
    # score_record
    "prompt_empty": "the prompt (user turns) is empty",
    "prompt_too_short": "the prompt (user turns) is too short",
    "response_empty": "the response (assistant turns) is empty",
    "response_too_short": "the response (assistant turns) is too short",
    "response_too_long": "the response (assistant turns) is too long",
    "response_no_alnum": "the response has no letters or digits",
    "response_special_chars": "the response has too many special characters",
    "response_repeated_chars": "one character makes up too much of the response",
    "response_repeat_run": "a character repeats many times in a row in the response",
    "malformed": "the record cannot be read as a conversation",
}
# Issues about the shape of a text: in a conversation they are judged on the response only.
# Indentation and blank lines are layout, not repetition: for the repeated-character rules a run
# of whitespace counts as one character (the seed's demo texts score the same either way).
_BLANK_RUN = re.compile(r"\s+")
_SHAPE_ISSUES = (
    "too_short",
    "too_long",
    "no_alnum",
    "special_chars",
    "repeated_chars",
    "repeat_run",
)


def issue_message(code: str) -> str:
    return ISSUES.get(code, code)


class QualityRules(BaseModel):
    """Thresholds and penalties (points out of 100). Defaults follow the seeds."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    pass_score: float = Field(80.0, ge=0, le=100, description="A record passes at this score.")
    # Conversation length in characters (seed module 5, DataCleaner.check_length).
    min_prompt_chars: int = Field(5, ge=0)
    min_response_chars: int = Field(10, ge=0)
    max_response_chars: int = Field(10000, ge=1)
    # Plain text (seed chapter 28, DataQualityMonitor): < short_text_chars or > long_text_chars.
    short_text_chars: int = Field(5, ge=0)
    long_text_chars: int = Field(1000, ge=1)
    max_special_ratio: float = Field(0.3, ge=0, le=1, description="share of non-alnum, non-space")
    max_char_share: float = Field(0.5, gt=0, le=1, description="share of the commonest character")
    max_repeat_run: int = Field(20, ge=1, description="longest allowed run of one character")
    pii_kinds: list[str] | None = Field(
        None, description="PII kinds to look for; None = the default kinds, [] = no PII check."
    )
    # Penalties. An empty field makes a record unusable; PII fails the default gate on its own
    # (redact it first), control characters and a long run alone do not (clean can fix them).
    penalty_empty: float = Field(100.0, ge=0)
    penalty_too_short: float = Field(30.0, ge=0)
    penalty_too_long: float = Field(20.0, ge=0)
    penalty_no_alnum: float = Field(40.0, ge=0)
    penalty_special_chars: float = Field(25.0, ge=0)
    penalty_repeated_chars: float = Field(35.0, ge=0)
    penalty_repeat_run: float = Field(15.0, ge=0)
    penalty_control_chars: float = Field(15.0, ge=0)
    penalty_pii: float = Field(25.0, ge=0)
    # Dataset-level deductions of `inspect` (points per unit share of the records read).
    duplicate_weight: float = Field(50.0, ge=0, description="x share of exact-duplicate copies")
    near_duplicate_weight: float = Field(25.0, ge=0, description="x share of near-duplicates")
    malformed_weight: float = Field(100.0, ge=0, description="x share of malformed records")
    # Dataset-level advice of `inspect`.
    max_label_imbalance: float = Field(3.0, ge=1, description="largest / smallest label count")
    min_dataset_records: int = Field(
        1000, ge=0, description="fewer usable records than this gets advice (seed module 5 §4.1)"
    )

    @field_validator("pii_kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str] | None) -> list[str] | None:
        unknown = sorted(set(kinds or ()) - set(PII_KINDS))
        if unknown:
            raise ValueError(f"unknown PII kind(s) {unknown}; allowed: {', '.join(PII_KINDS)}")
        return kinds

    @model_validator(mode="after")
    def _ordered_bounds(self) -> QualityRules:
        if self.max_response_chars < self.min_response_chars:
            raise ValueError("max_response_chars must be >= min_response_chars")
        if self.long_text_chars < self.short_text_chars:
            raise ValueError("long_text_chars must be >= short_text_chars")
        return self

    def pii_kinds_used(self) -> list[str]:
        return list(DEFAULT_PII_KINDS) if self.pii_kinds is None else list(self.pii_kinds)


@dataclass
class TextStats:
    """Measures of one text. For a conversation: the response's shape, but control characters
    and PII over every message (a phone number in a prompt leaks just the same); PII offsets then
    point into the response or into the other messages joined by newlines."""

    chars: int
    has_alnum: bool
    special_ratio: float
    char_share: float
    longest_run: int
    control_chars: int
    pii: list[PiiHit] = field(default_factory=list)


@dataclass
class RecordScore:
    score: float
    passed: bool
    issues: list[str]  # codes, see ISSUES / issue_message
    stats: TextStats | None = None  # what was measured, so a report need not measure twice

    @property
    def messages(self) -> list[str]:
        return [issue_message(code) for code in self.issues]


def measure_text(text: str, rules: QualityRules) -> TextStats:
    squeezed = _BLANK_RUN.sub(" ", text)  # so indented code is not "mostly spaces"
    return TextStats(
        chars=len(text),
        has_alnum=any(c.isalnum() for c in text),
        special_ratio=special_char_ratio(text),
        char_share=most_common_char_share(squeezed),
        longest_run=longest_repeat_run(squeezed),
        control_chars=control_char_count(text),
        pii=find_pii(text, kinds) if (kinds := rules.pii_kinds_used()) else [],
    )


def score_text(text: str, rules: QualityRules) -> RecordScore:
    """The seed monitor's rules on one text: "" scores 30 (too short, no letters) instead of
    dividing by zero."""
    stats = measure_text(text, rules)
    issues = _length_issues(stats.chars, rules) + _content_issues(stats, rules)
    return _result(issues, rules, stats)


def score_record(messages: list[dict], rules: QualityRules) -> RecordScore:
    """A conversation: prompt = the user turns, response = the assistant turns (joined).

    Length rules per field; the text-shape rules on the response only (prompts are short and
    terse by nature); control characters and PII anywhere in the conversation.
    """
    prompt = _joined(messages, "user")
    response = _joined(messages, "assistant")
    stats = measure_text(response, rules)
    others = "\n".join(m.get("content") or "" for m in messages if m.get("role") != "assistant")
    stats.control_chars += control_char_count(others)
    if kinds := rules.pii_kinds_used():
        stats.pii += find_pii(others, kinds)
    issues = _field_issues(messages, prompt, response, rules)
    content = _content_issues(stats, rules)
    if "response_empty" in issues:  # an empty response has no shape to judge
        content = [c for c in content if c not in _SHAPE_ISSUES]
    issues += [f"response_{c}" if c in _SHAPE_ISSUES else c for c in content]
    return _result(issues, rules, stats)


def _joined(messages: list[dict], role: str) -> str:
    return "\n".join(m.get("content") or "" for m in messages if m.get("role") == role)


def _blank(messages: list[dict], role: str) -> bool:
    turns = [m.get("content") or "" for m in messages if m.get("role") == role]
    return not turns or any(not t.strip() for t in turns)


def _field_issues(messages: list[dict], prompt: str, response: str, rules: QualityRules) -> list:
    # Lengths ignore surrounding whitespace: "   hi   " is a two-character prompt.
    issues = []
    if _blank(messages, "user"):
        issues.append("prompt_empty")
    elif len(prompt.strip()) < rules.min_prompt_chars:
        issues.append("prompt_too_short")
    if _blank(messages, "assistant"):
        issues.append("response_empty")
    elif len(response.strip()) < rules.min_response_chars:
        issues.append("response_too_short")
    elif len(response.strip()) > rules.max_response_chars:
        issues.append("response_too_long")
    return issues


def _length_issues(chars: int, rules: QualityRules) -> list[str]:
    if chars < rules.short_text_chars:
        return ["too_short"]
    if chars > rules.long_text_chars:
        return ["too_long"]
    return []


def _content_issues(stats: TextStats, rules: QualityRules) -> list[str]:
    issues = []
    if not stats.has_alnum:
        issues.append("no_alnum")
    if stats.special_ratio > rules.max_special_ratio:
        issues.append("special_chars")
    if stats.char_share > rules.max_char_share:
        issues.append("repeated_chars")
    elif stats.longest_run > rules.max_repeat_run:  # the same defect is penalised once
        issues.append("repeat_run")
    if stats.control_chars:
        issues.append("control_chars")
    if stats.pii:
        issues.append("pii")
    return issues


def _penalty(code: str, rules: QualityRules) -> float:
    base = code.removeprefix("response_").removeprefix("prompt_")
    name = "penalty_empty" if base == "empty" else f"penalty_{base}"
    return getattr(rules, name)


def _result(issues: list[str], rules: QualityRules, stats: TextStats) -> RecordScore:
    score = max(0.0, 100.0 - sum(_penalty(code, rules) for code in issues))
    return RecordScore(score, score >= rules.pass_score, issues, stats)
