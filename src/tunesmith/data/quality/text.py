"""Text primitives shared by inspect, clean and dedup: normalization, language, character stats.

Everything here is pure, stdlib-only and fast enough for 100k records a pass: the per-character
work runs inside compiled regular expressions or C-level builtins, not Python loops.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import cache

# --- normalization -------------------------------------------------------------------------------

_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x85]")
# C0/C1 controls except \t and \n (\r is turned into \n first), plus invisible format characters
# that carry no meaning in training text. ZWJ/ZWNJ and bidi marks are kept: emoji sequences,
# Persian and right-to-left text need them.
_REMOVABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u180e\u200b\u2060\ufeff]")
# Runs of two or more horizontal blanks between two non-blank characters; leading indentation is
# not touched because code blocks and nested lists in responses depend on it.
_INNER_BLANKS = re.compile(r"(?<=\S)[^\S\n]{2,}(?=\S)")
_TRAILING_BLANKS = re.compile(r"[^\S\n]+$", re.MULTILINE)

# Chinese context for punctuation: Han ideographs, CJK symbols and punctuation, full-width forms.
_ZH_CHARS = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff01-\uff60\U00020000-\U0003134f"
_HAS_ZH = re.compile(f"[{_ZH_CHARS}]")
_IS_ZH = _HAS_ZH.fullmatch
# A run of ASCII punctuation and the blanks after it.
_PUNCT_RUN = re.compile(r"([,.!?:;()]+)([ \t]*)")
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)
_FULL_WIDTH = str.maketrans(",.!?:;()", "，。！？：；（）")
_HALF_OPEN = re.compile(r"\(([^()（）\n]*)）")
_HALF_CLOSE = re.compile(r"（([^()（）\n]*)\)")


def normalize_text(text: str, nfkc: bool = True, zh_punct: bool = True) -> str:
    """Normalize a text for training and comparison.

    Steps, in order: NFKC (full-width letters, digits and punctuation become half-width, U+3000
    becomes a space); line breaks unified to \\n; control characters removed except \\n and \\t;
    runs of 2+ spaces/tabs inside a line collapsed to one space (indentation kept); trailing
    blanks of each line and of the whole text stripped. With `zh_punct`, in text that contains
    Chinese, the ASCII punctuation , . ! ? : ; ( ) touching a Chinese character becomes
    full-width (，。！？：；（）) and blanks right after it are dropped. This has to run after NFKC,
    which would otherwise turn the full-width marks back into ASCII. Rules of the conversion:
    a run of marks ("?!") converts as a unit; "..." and longer runs of dots stay as they are;
    a bracket pair converts both halves when either half does; marks between two non-Chinese
    characters ("3.14", "10:30", "a, b") and marks inside `code` or ``` fences never change.
    """
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = _NEWLINES.sub("\n", text)
    text = _REMOVABLE.sub("", text)
    text = _INNER_BLANKS.sub(" ", text)
    text = _TRAILING_BLANKS.sub("", text)
    if zh_punct and _HAS_ZH.search(text):
        text = _zh_punctuation(text)
    return text.strip()


def _zh_punctuation(text: str) -> str:
    if "`" not in text:
        return _zh_prose_punctuation(text)
    # Code (fenced blocks and `inline` spans) keeps its ASCII: print(变量) must stay valid.
    parts, last = [], 0
    for code in _CODE.finditer(text):
        parts += [_zh_prose_punctuation(text[last : code.start()]), code.group()]
        last = code.end()
    parts.append(_zh_prose_punctuation(text[last:]))
    return "".join(parts)


def _zh_prose_punctuation(text: str) -> str:
    text = _PUNCT_RUN.sub(_convert_run, text)
    # Pair up brackets that only one side of which touched Chinese: "中文（English)".
    text = _HALF_OPEN.sub(r"（\1）", text)
    return _HALF_CLOSE.sub(r"（\1）", text)


def _convert_run(match: re.Match[str]) -> str:
    run, blanks = match.groups()
    text, start, end = match.string, match.start(), match.end(1)
    touches_zh = (start > 0 and _IS_ZH(text[start - 1])) or (end < len(text) and _IS_ZH(text[end]))
    if not touches_zh or (len(run) > 1 and set(run) == {"."}):
        return match.group(0)
    full = run.translate(_FULL_WIDTH)
    # Full-width marks carry their own spacing; keep blanks only before an opening bracket.
    return full + (blanks if full.endswith("（") else "")


# --- language ------------------------------------------------------------------------------------

# (code, character class, counted as characters (True) or as words (False)). Ideographic and
# syllabic scripts count characters; alphabetic scripts count words, so a few English words in a
# Chinese sentence do not outvote it.
_SCRIPTS: tuple[tuple[str, str, bool], ...] = (
    ("ja", "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f", True),
    ("zh", "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f", True),
    ("ko", "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f", True),
    ("ru", "\u0400-\u04ff", False),
    ("ar", "\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff", False),
    ("he", "\u0590-\u05ff", False),
    ("el", "\u0370-\u03ff", False),
    ("hi", "\u0900-\u097f", False),
    ("bn", "\u0980-\u09ff", False),
    ("ta", "\u0b80-\u0bff", False),
    ("te", "\u0c00-\u0c7f", False),
    ("th", "\u0e00-\u0e7f", True),
    ("ka", "\u10a0-\u10ff", False),
    ("hy", "\u0530-\u058f", False),
    ("am", "\u1200-\u137f", False),
    ("latin", "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f", False),
)
# One pass over the text: group k+1 captures a run of script k.
_SCRIPT_RUN = re.compile("|".join(f"([{cls}]+)" for _, cls, _ in _SCRIPTS))
_HAS_LATIN = re.compile("[A-Za-z]")
_LATIN_WORD = re.compile(r"[a-z\u00e0-\u00f6\u00f8-\u00ff]+")
_SAMPLE = 2000  # characters looked at; language does not change halfway through a record

# Frequent function words; a word listed for several languages counts for each of them.
_STOPWORD_LISTS = {
    "en": (
        "the and is are of to that it for with was this you be on not have what how can "
        "my does from by an which were has would there their will your"
    ),
    "fr": (
        "le la les des est et une un du pour pas que qui dans ce sur avec sont je vous il "
        "elle nous au aux ne mais cette être très"
    ),
    "de": (
        "der die das und ist nicht ein eine zu den mit von sich auf für ich es dem sie wir "
        "auch wie sind oder aber wird werden"
    ),
    "es": (
        "el los las y es una por con para del que se no lo como más pero su está son muy "
        "también al ya fue hay"
    ),
    "it": (
        "il lo gli della di e è che per non sono una con del un anche questo come ma più "
        "nel alla hanno ho perché"
    ),
    "pt": (
        "o os as um uma não é do da dos das em no na com para que se mas por mais você são "
        "está também muito isso ao"
    ),
}
_STOPWORDS = {lang: frozenset(words.split()) for lang, words in _STOPWORD_LISTS.items()}


def detect_language(text: str) -> str:
    """Guess the language of a text from its script, without a model.

    Returns an ISO 639-1 code for scripts that mostly belong to one language ("zh", "ja", "ko",
    "ru", "ar", "th", ...), "en"/"fr"/"de"/"es"/"it"/"pt" for Latin script with a clear
    function-word majority, "latin" for other Latin-script text and "unknown" for text without
    letters. Japanese is told from Chinese by kana: kana make up at least a tenth of its
    CJK characters.
    """
    sample = text[:_SAMPLE]
    if sample.isascii():
        return _latin_language(sample) if _HAS_LATIN.search(sample) else "unknown"
    counts = _script_counts(sample)
    kana, han = counts.pop("ja"), counts["zh"]
    if kana and kana * 10 >= kana + han:
        counts["ja"] = kana + han
    best = max(counts, key=counts.__getitem__)
    if not counts[best]:
        return "unknown"
    return _latin_language(sample) if best == "latin" else best


def _script_counts(text: str) -> dict[str, int]:
    counts = dict.fromkeys((code for code, _, _ in _SCRIPTS), 0)
    for m in _SCRIPT_RUN.finditer(text):
        code, _, by_char = _SCRIPTS[m.lastindex - 1]
        counts[code] += m.end() - m.start() if by_char else 1
    return counts


def _latin_language(text: str) -> str:
    words = _LATIN_WORD.findall(text.lower())
    scores = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    ranked = sorted(scores.values(), reverse=True)
    if ranked[0] == 0 or ranked[0] == ranked[1]:
        return "latin"
    return max(scores, key=scores.__getitem__)


# --- character statistics ------------------------------------------------------------------------

# re's \w is exactly str.isalnum() plus "_", so this matches "neither alphanumeric nor blank".
_SPECIAL = re.compile(r"[^\w\s]|_")
_REPEATS = re.compile(r"(.)\1+", re.DOTALL)


def special_char_ratio(text: str) -> float:
    """Share of characters that are neither alphanumeric nor whitespace (0.0 for "").

    Combining marks (the vowel signs of Hindi or Thai) belong to their letter and do not count.
    """
    if not text:
        return 0.0
    specials = _SPECIAL.findall(text)
    marks = sum(1 for c in specials if not c.isascii() and unicodedata.category(c)[0] == "M")
    return (len(specials) - marks) / len(text)


def longest_repeat_run(text: str) -> int:
    """Length of the longest run of one repeated character (0 for "")."""
    return max((m.end() - m.start() for m in _REPEATS.finditer(text)), default=min(len(text), 1))


def most_common_char_share(text: str) -> float:
    """Count of the most frequent character divided by the length (0.0 for "")."""
    if not text:
        return 0.0
    return Counter(text).most_common(1)[0][1] / len(text)


def control_char_count(text: str) -> int:
    """Number of control (Cc) and format (Cf) characters, not counting \\n, \\t and \\r."""
    return len(_control_chars().findall(text))


@cache
def _control_chars() -> re.Pattern[str]:
    # Built from the running Python's Unicode tables so it never drifts from the category
    # definition. Cc and Cf only occur in planes 0, 1 and 14; scanning those takes ~30 ms once.
    codes = [
        c
        for plane in (0, 1, 14)
        for c in range(plane << 16, (plane + 1) << 16)
        if unicodedata.category(chr(c)) in ("Cc", "Cf") and chr(c) not in "\n\t\r"
    ]
    return re.compile("[" + "".join(_ranges(codes)) + "]")


def _ranges(codes: list[int]) -> list[str]:
    parts, start = [], None
    for i, c in enumerate(codes):
        start = c if start is None else start
        if i + 1 == len(codes) or codes[i + 1] != c + 1:
            parts.append(re.escape(chr(start)) + ("-" + re.escape(chr(c)) if c > start else ""))
            start = None
    return parts
