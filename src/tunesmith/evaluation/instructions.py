"""Rule checks of format constraints in instructions ("answer in JSON", "at most 50 words").

A constraint is a dict {"type": ..., "value": ...}:

    json              value ignored; the reply (a surrounding ``` fence allowed) parses as JSON
    min_words         int; Latin words plus CJK characters (one word each)
    max_words         int
    min_items         int; bullet ("-", "*", "+", "•") or numbered ("1.", "2)", "3、", "(4)") lines
    max_items         int
    language          "en" | "zh"
    include_keywords  list[str]; every one occurs (case-insensitive; whole word for ASCII words)
    exclude_words     list[str]; none occurs (same matching)
    max_chars         int; characters of the trimmed reply
    starts_with       str; the trimmed reply starts with it (case-insensitive)
    ends_with         str; the trimmed reply ends with it (case-insensitive)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from tunesmith.evaluation.metrics import count_words, detect_lang
from tunesmith.utils.errors import DataError

_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_ITEM = re.compile(
    r"^[ \t]*(?:[-*+•·][ \t]+|\d{1,3}[.)][ \t]+|\d{1,3}、[ \t]*|[(（]\d{1,3}[)）][ \t]*)\S",
    re.MULTILINE,
)
_ASCII_WORD = re.compile(r"[A-Za-z0-9_' -]+")


def count_items(text: str) -> int:
    """Lines that start a bullet or numbered list item."""
    return len(_ITEM.findall(text))


def contains(text: str, word: str) -> bool:
    """Case-insensitive; ASCII words match whole words ("cat" is not in "category")."""
    if _ASCII_WORD.fullmatch(word):
        return (
            re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", text, re.I)
            is not None
        )
    return word.casefold() in text.casefold()


def _json(text: str, _value) -> tuple[bool, str]:
    body = text.strip()
    fenced = _FENCE.match(body)
    try:
        json.loads(fenced.group(1) if fenced else body)
    except json.JSONDecodeError as exc:
        return False, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return True, "valid JSON"


def _bound(measure: Callable[[str], int], unit: str, at_least: bool):
    def check(text: str, value) -> tuple[bool, str]:
        count = measure(text)
        passed = count >= value if at_least else count <= value
        return passed, f"{count} {unit} ({'at least' if at_least else 'at most'} {value})"

    return check


def _language(text: str, value) -> tuple[bool, str]:
    if value not in ("en", "zh"):
        raise DataError(f"constraint language: value must be 'en' or 'zh', got {value!r}")
    if not text.strip():
        return False, "empty reply"
    found = detect_lang([text])
    return found == value, f"reply is in {found} (expected {value})"


def _include(text: str, value) -> tuple[bool, str]:
    missing = [w for w in _words(value, "include_keywords") if not contains(text, w)]
    return not missing, f"missing {missing}" if missing else "all keywords present"


def _exclude(text: str, value) -> tuple[bool, str]:
    found = [w for w in _words(value, "exclude_words") if contains(text, w)]
    return not found, f"contains {found}" if found else "no forbidden word"


def _starts(text: str, value) -> tuple[bool, str]:
    head = text.strip()[: len(value) + 20]
    return text.strip().lower().startswith(str(value).lower()), f"starts with {head!r}"


def _ends(text: str, value) -> tuple[bool, str]:
    tail = text.strip()[-len(value) - 20 :]
    return text.strip().lower().endswith(str(value).lower()), f"ends with {tail!r}"


_CHECKS: dict[str, Callable[[str, object], tuple[bool, str]]] = {
    "json": _json,
    "min_words": _bound(count_words, "words", at_least=True),
    "max_words": _bound(count_words, "words", at_least=False),
    "min_items": _bound(count_items, "list items", at_least=True),
    "max_items": _bound(count_items, "list items", at_least=False),
    "language": _language,
    "include_keywords": _include,
    "exclude_words": _exclude,
    "max_chars": _bound(lambda t: len(t.strip()), "characters", at_least=False),
    "starts_with": _starts,
    "ends_with": _ends,
}
CONSTRAINT_TYPES = tuple(_CHECKS)
_NUMERIC = {"min_words", "max_words", "min_items", "max_items", "max_chars"}


def check_constraints(response: str, constraints: list[dict]) -> list[dict]:
    """One {"type", "passed", "detail"} per constraint, in the order given."""
    results = []
    for constraint in constraints:
        kind, value = _validated(constraint)
        passed, detail = _CHECKS[kind](response, value)
        results.append({"type": kind, "passed": bool(passed), "detail": detail})
    return results


def summarize_by_type(results: list[list[dict]]) -> dict[str, dict]:
    """Pass counts and rates per constraint type over all replies' check results."""
    summary: dict[str, dict] = {}
    for checks in results:
        for check in checks:
            entry = summary.setdefault(check["type"], {"passed": 0, "total": 0})
            entry["passed"] += int(check["passed"])
            entry["total"] += 1
    for entry in summary.values():
        entry["rate"] = entry["passed"] / entry["total"]
    return summary


def _validated(constraint: dict) -> tuple[str, object]:
    if not isinstance(constraint, dict) or "type" not in constraint:
        raise DataError(f"constraint {constraint!r} needs a 'type' key")
    kind = constraint["type"]
    if kind not in _CHECKS:
        raise DataError(
            f"unknown constraint type {kind!r}; known types: {', '.join(CONSTRAINT_TYPES)}"
        )
    value = constraint.get("value")
    if kind in _NUMERIC and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise DataError(f"constraint {kind}: 'value' must be a non-negative integer, got {value!r}")
    if kind in ("starts_with", "ends_with") and not (isinstance(value, str) and value):
        raise DataError(f"constraint {kind}: 'value' must be a non-empty string, got {value!r}")
    return kind, value


def _words(value, kind: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(w, str) and w for w in value):
        raise DataError(f"constraint {kind}: 'value' must be a list of words, got {value!r}")
    return value
