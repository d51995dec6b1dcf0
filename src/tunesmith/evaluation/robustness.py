"""Input perturbations and the consistency of a model's outputs under them.

Each perturbation is deterministic for a (text, kind, seed) and changes at least one spot when
the text has anything it applies to; otherwise the text comes back unchanged (zh_noise on
English, synonym with no word of the table), so a runner can skip items where
`perturb(t, k, s) == t`. Synonyms come from a small built-in English / Chinese table: WordNet
would need a data download, and a paraphrasing model would make the test depend on another model.
"""

from __future__ import annotations

import random
import re
import string

from tunesmith.evaluation.metrics import chrf_sentence
from tunesmith.utils.errors import ConfigError, DataError

PERTURBATIONS = ("typo", "case", "punctuation", "whitespace", "zh_noise", "synonym")
RATE = 0.15  # share of candidate spots changed

_LATIN_WORD = re.compile(r"[A-Za-z]{3,}")
_WORD = re.compile(r"[A-Za-z]+")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}，。！？、；：“”‘’（）《》…]")
# characters commonly confused in Chinese typing (same pinyin or similar shape)
_ZH_CONFUSABLE = {
    "的": "地", "地": "得", "得": "的", "在": "再", "再": "在", "做": "作", "作": "做",
    "那": "哪", "哪": "那", "他": "她", "她": "他", "已": "己", "己": "已", "即": "既",
    "既": "即", "象": "像", "像": "象", "帐": "账", "账": "帐", "进": "近", "近": "进",
    "以": "已", "是": "事", "事": "是", "到": "道", "道": "到", "和": "合", "合": "和",
}  # fmt: skip
_SYNONYMS = {
    "big": "large", "large": "big", "small": "little", "quick": "fast", "fast": "quick",
    "help": "assist", "explain": "describe", "describe": "explain", "answer": "reply",
    "good": "fine", "bad": "poor", "begin": "start", "start": "begin", "show": "display",
    "give": "provide", "provide": "give", "make": "create", "create": "make", "use": "utilize",
    "simple": "easy", "easy": "simple", "important": "significant", "find": "locate",
    "tell": "inform", "list": "enumerate", "write": "compose", "short": "brief",
    "brief": "short", "question": "query", "buy": "purchase", "end": "finish",
    "帮助": "协助", "协助": "帮助", "解释": "说明", "说明": "解释", "快速": "迅速",
    "迅速": "快速", "简单": "简易", "重要": "关键", "喜欢": "喜爱", "使用": "利用",
    "告诉": "告知", "如何": "怎样", "怎样": "如何", "为什么": "为何", "非常": "十分",
    "十分": "非常", "问题": "疑问", "回答": "答复", "开始": "着手", "结束": "完成",
    "购买": "采购", "列出": "列举", "介绍": "讲述", "方法": "办法",
}  # fmt: skip
_SYNONYM_RE = re.compile(
    "|".join(rf"\b{w}\b" if w.isascii() else w for w in sorted(_SYNONYMS, key=len, reverse=True)),
    re.IGNORECASE,
)


def perturb(text: str, kind: str, seed: int = 0) -> str:
    """The text with one kind of noise: typo, case, punctuation, whitespace, zh_noise, synonym."""
    if kind not in _KINDS:
        raise ConfigError(f"unknown perturbation {kind!r}; known: {', '.join(PERTURBATIONS)}")
    return _KINDS[kind](text, random.Random(f"{seed}:{kind}:{text}"))


def _pick(rng: random.Random, n: int) -> set[int]:
    """Indices of about RATE of n candidates, at least one (none when n == 0)."""
    return set(rng.sample(range(n), max(1, round(n * RATE)))) if n else set()


def _replace_matches(text: str, pattern: re.Pattern[str], rng: random.Random, fn) -> str:
    matches = list(pattern.finditer(text))
    chosen = _pick(rng, len(matches))
    parts, last = [], 0
    for i, m in enumerate(matches):
        if i in chosen:
            parts += [text[last : m.start()], fn(m.group(0), rng)]
            last = m.end()
    return "".join([*parts, text[last:]])


def _typo_word(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word) - 1)
    op = rng.choice(("swap", "drop", "double"))
    if op == "swap" and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == "drop":
        return word[:i] + word[i + 1 :]
    return word[: i + 1] + word[i] + word[i + 1 :]


def _typo(text: str, rng: random.Random) -> str:
    if not _LATIN_WORD.search(text):
        return _zh_noise(text, rng)  # no Latin words: the Chinese equivalent of a typo
    return _replace_matches(text, _LATIN_WORD, rng, _typo_word)


def _case(text: str, rng: random.Random) -> str:
    def flip(word: str, rng: random.Random) -> str:
        options = [f(word) for f in (str.upper, str.lower, str.title, str.swapcase)]
        changed = [o for o in options if o != word]
        return rng.choice(changed) if changed else word

    return _replace_matches(text, _WORD, rng, flip)


def _punctuation(text: str, rng: random.Random) -> str:
    if _PUNCT.search(text):
        return _replace_matches(text, _PUNCT, rng, lambda _m, _r: "")
    marks = "，" if _CJK.search(text) else ","  # nothing to drop: add a stray mark instead
    return _replace_matches(text, re.compile(r"(?<=\S)(?=\s)|$"), rng, lambda m, _r: m + marks)


def _whitespace(text: str, rng: random.Random) -> str:
    gaps = re.compile(r"\s+|(?<=[\u4e00-\u9fff])(?=[\u4e00-\u9fff])")
    noisy = _replace_matches(text, gaps, rng, lambda _m, r: r.choice(("  ", "\t", " \n ", "   ")))
    return f" {noisy}  "


def _zh_noise(text: str, rng: random.Random) -> str:
    def noise(ch: str, rng: random.Random) -> str:
        op = rng.choice(("confuse", "drop", "double"))
        if op == "confuse" and ch in _ZH_CONFUSABLE:
            return _ZH_CONFUSABLE[ch]
        return "" if op == "drop" else ch * 2

    return _replace_matches(text, _CJK, rng, noise)


def _synonym(text: str, rng: random.Random) -> str:
    def swap(word: str, _rng: random.Random) -> str:
        new = _SYNONYMS[word.lower()]
        return new.capitalize() if word[:1].isupper() else new

    return _replace_matches(text, _SYNONYM_RE, rng, swap)


_KINDS = {
    "typo": _typo,
    "case": _case,
    "punctuation": _punctuation,
    "whitespace": _whitespace,
    "zh_noise": _zh_noise,
    "synonym": _synonym,
}


def consistency(original: list[str], perturbed: list[str], mode: str = "text") -> list[float]:
    """Per-item agreement in 0..1: chrF / 100 of the two outputs ("text"), or 1.0 when the
    labels are equal after trimming ("label")."""
    if len(original) != len(perturbed):
        raise DataError(f"{len(original)} original outputs but {len(perturbed)} perturbed ones")
    if mode == "label":
        return [float(a.strip() == b.strip()) for a, b in zip(original, perturbed, strict=True)]
    if mode != "text":
        raise ConfigError(f"consistency mode {mode!r} is not supported; use 'text' or 'label'")
    return [
        1.0 if a.strip() == b.strip() else chrf_sentence(b, a) / 100.0
        for a, b in zip(original, perturbed, strict=True)
    ]


def robustness_summary(per_kind: dict[str, list[float]]) -> dict[str, dict]:
    """Mean and minimum consistency per perturbation kind."""
    return {
        kind: {
            "mean": sum(values) / len(values) if values else None,
            "min": min(values) if values else None,
            "n": len(values),
        }
        for kind, values in per_kind.items()
    }
