"""Sanity checks for the identity dataset bundled with ``tunesmith quickstart``."""

from __future__ import annotations

import json
import re
import string
import unicodedata
from importlib.resources import files

import pytest

DATA = files("tunesmith.workflows") / "quickstart_data"

CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_PUNCT = set(string.punctuation) | set("，。！？、；：“”‘’（）《》【】…—·～「」『』")


def _load(name: str) -> list[dict]:
    text = (DATA / name).read_text(encoding="utf-8")
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        assert isinstance(obj, dict), f"{name}:{lineno} is not a JSON object"
        rows.append(obj)
    return rows


def _norm(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).lower()
    return "".join(
        ch
        for ch in s
        if not ch.isspace() and ch not in _PUNCT and not unicodedata.category(ch).startswith("P")
    )


def _is_zh(s: str) -> bool:
    return bool(CJK_RE.search(s))


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return _load("identity_train.jsonl")


@pytest.fixture(scope="module")
def heldout() -> list[dict]:
    return _load("identity_heldout.jsonl")


@pytest.fixture(scope="module")
def general() -> list[dict]:
    return _load("general.jsonl")


def test_train_schema_and_counts(train):
    assert len(train) >= 110
    for r in train:
        assert set(r) <= {"instruction", "input", "output"}
        assert isinstance(r["instruction"], str) and r["instruction"].strip()
        assert isinstance(r["output"], str) and r["output"].strip()
        assert r.get("input", "") == ""
    zh = [r for r in train if _is_zh(r["instruction"])]
    en = [r for r in train if not _is_zh(r["instruction"])]
    assert len(en) >= 70
    assert len(zh) >= 40


def test_train_language_consistent(train):
    # Chinese questions get Chinese answers; English questions get English answers.
    for r in train:
        assert _is_zh(r["instruction"]) == _is_zh(r["output"]), r


def test_train_outputs_mention_name(train):
    for r in train:
        assert "{{name}}" in r["output"], r
    with_author = sum("{{author}}" in r["output"] for r in train)
    assert with_author >= 0.9 * len(train)


def test_only_known_placeholders(train):
    for r in train:
        for field in ("instruction", "output"):
            for ph in re.findall(r"\{\{[^}]*\}\}", r[field]):
                assert ph in ("{{name}}", "{{author}}"), (ph, r)


def test_no_duplicate_train_instructions(train):
    seen: dict[str, str] = {}
    for r in train:
        key = _norm(r["instruction"])
        assert key, r
        assert key not in seen, f"duplicate: {r['instruction']!r} vs {seen[key]!r}"
        seen[key] = r["instruction"]


def test_answers_are_short(train):
    for r in train:
        out = r["output"]
        if _is_zh(out):
            assert len(CJK_RE.findall(out)) < 120, out
        else:
            assert len(out.split()) < 60, out


def test_heldout_counts_and_schema(heldout):
    assert len(heldout) == 12
    for q in heldout:
        assert set(q) == {"question", "lang"}
        assert q["lang"] in ("en", "zh")
        assert q["question"].strip()
        assert _is_zh(q["question"]) == (q["lang"] == "zh"), q
        assert "{{" not in q["question"]
    assert sum(q["lang"] == "en" for q in heldout) == 8
    assert sum(q["lang"] == "zh" for q in heldout) == 4
    assert len({_norm(q["question"]) for q in heldout}) == 12


def test_heldout_not_in_train(train, heldout):
    train_keys = {_norm(r["instruction"]) for r in train}
    for q in heldout:
        assert _norm(q["question"]) not in train_keys, q


@pytest.fixture(scope="module")
def replay() -> list[dict]:
    return _load("general_replay.jsonl")


def test_general(general, replay, train):
    assert len(general) >= 3
    assert len(replay) >= 12
    train_keys = {_norm(r["instruction"]) for r in train}
    # The displayed general questions are held out from the replayed ones too.
    assert not {_norm(q["question"]) for q in general} & {_norm(q["question"]) for q in replay}
    for q in general + replay:
        assert set(q) == {"question", "lang"}
        assert q["lang"] in ("en", "zh")
        assert _is_zh(q["question"]) == (q["lang"] == "zh"), q
        assert "{{" not in q["question"]
        assert _norm(q["question"]) not in train_keys


def test_norm_helper():
    assert _norm("  What's your NAME?! ") == _norm("whats your name")
    assert _norm("你叫什么名字？") == _norm("你叫什么名字")
