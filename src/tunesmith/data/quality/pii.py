"""Find and redact personal information, with the Chinese formats the common tools miss.

Each kind is a regular expression that proposes candidates and, where the format has one, a
validator that rejects look-alikes: the ISO 7064 checksum and birth date of a resident ID, the
Luhn checksum of a bank card, `ipaddress` for IPv6. Digits never match inside a longer digit
run. Full-width digits and letters (common in Chinese text) are folded to ASCII before matching,
one character for one, so offsets still point into the original text.
"""

from __future__ import annotations

import bisect
import datetime
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

PII_KINDS = ("email", "cn_mobile", "phone", "cn_id", "bank_card", "ipv4", "ipv6", "url")
DEFAULT_PII_KINDS = tuple(k for k in PII_KINDS if k != "url")
# When two candidates overlap, the kind listed first wins: structured spans (a URL, an email)
# swallow the numbers inside them, and checksum-validated kinds beat the generic phone pattern.
_PRECEDENCE = ("url", "email", "cn_id", "bank_card", "cn_mobile", "ipv6", "ipv4", "phone")


@dataclass(frozen=True)
class PiiHit:
    kind: str
    start: int
    end: int
    text: str


# --- patterns ------------------------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(
    rf"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@(?:{_LABEL}\.)+[A-Za-z]{{2,24}}(?![A-Za-z0-9-])"
)
_URL = re.compile(
    r"(?<![A-Za-z0-9])(?:(?:https?|ftp)://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+"
)
_URL_TAIL = ".,;:!?'\""
# Patterns that may start with a digit begin with a character class and check the character
# before it with a two-wide lookbehind ("[1-9](?<![0-9][1-9])" rather than "(?<![0-9])[1-9]"):
# re then skips ahead to candidate characters instead of trying every position, 5-8x faster.

# 18 characters: 6-digit region, YYYYMMDD birth date, 3-digit sequence, check digit or X.
_CN_ID = re.compile(r"[1-9](?<![0-9][1-9])[0-9]{5}(?:18|19|20)[0-9]{9}[0-9Xx](?![0-9])")
# Contiguous 13-19 digits, or groups of 4 with one separator kept throughout. The leading digit
# is that of a payment network (2-6 and 9: Mastercard, Amex/JCB, Visa, UnionPay, domestic
# cards), which keeps 13-digit millisecond timestamps (leading 1) out.
_BANK_CARD = re.compile(
    r"[2-69](?<![0-9][2-69])(?:[0-9]{12,18}|[0-9]{3}([ -])[0-9]{4}(?:\1[0-9]{4}){1,2}"
    r"(?:\1[0-9]{1,4})?)(?![0-9])(?!\1[0-9])"
)
# 1[3-9]x xxxx xxxx, optionally after +86 or 0086; the first character is +, 0 or 1.
_CN_MOBILE = re.compile(
    r"[+01](?<![0-9+][+01])(?:(?<=\+)86[ -]?1|(?<=0)086[ -]?1|(?<=1))"
    r"[3-9][0-9](?:[ -]?[0-9]{4}){2}(?![0-9])"
)
# International numbers (+country code, 8-15 digits in all), North American (xxx) xxx-xxxx and
# xxx-xxx-xxxx, and Chinese landlines with an area code (010-12345678, 0755-1234567).
_PHONE = re.compile(
    r"(?<![0-9A-Za-z+])(?:"
    r"\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,4}\)?){2,5}"
    r"|\([0-9]{3}\) ?[0-9]{3}[ .-][0-9]{4}"
    r"|[0-9]{3}([.-])[0-9]{3}\1[0-9]{4}"
    r"|0[1-9][0-9]{1,2}-[2-9][0-9]{6,7}"
    r")(?![0-9])"
)
# Four dotted numbers; _ipv4_valid checks 0-255 without leading zeros.
_IPV4 = re.compile(r"[0-9](?<![0-9.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![0-9]|\.[0-9])")
_DIGIT = re.compile("[0-9]")
# Candidates only; `ipaddress` decides. Letters around it are excluded so "std::vector" and
# hex hashes are not read as addresses.
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
    r"(?:(?<=:)[0-9]{1,3}(?:\.[0-9]{1,3}){3})?(?![0-9A-Za-z]|\.[0-9])"
)
_FULL_WIDTH = re.compile("[\uff01-\uff5e]")
_FOLD = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_CHECK_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


# --- validators ----------------------------------------------------------------------------------


def cn_id_valid(number: str) -> bool:
    """True for an 18-character China resident ID with a real birth date and a valid check digit."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        born = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    if not datetime.date(1880, 1, 1) <= born <= datetime.date.today():
        return False
    return number[17].upper() == cn_id_check_char(number[:17])


def cn_id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits of a resident ID."""
    total = sum(int(d) * w for d, w in zip(first17, _CHECK_WEIGHTS, strict=True))
    return "10X98765432"[total % 11]


def luhn_valid(digits: str) -> bool:
    """True when a digit string passes the Luhn checksum used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _ipv4_valid(text: str) -> bool:
    return all(int(o) <= 255 and (o == "0" or o[0] != "0") for o in text.split("."))


def _bank_card_valid(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _phone_valid(text: str) -> bool:
    return not text.startswith("+") or 8 <= sum(c.isdigit() for c in text) <= 15


def _ipv6_valid(text: str) -> bool:
    if not any(c in "0123456789abcdefABCDEF" for c in text):
        return False  # "::" alone is more likely Haskell or C++ than an address
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _url_trim(text: str) -> str:
    text = text.rstrip(_URL_TAIL)
    while text.endswith(")") and text.count(")") > text.count("("):
        text = text[:-1].rstrip(_URL_TAIL)
    return text


_KINDS: dict[str, tuple[re.Pattern[str], Callable[[str], bool] | None]] = {
    "email": (_EMAIL, None),
    "cn_mobile": (_CN_MOBILE, None),
    "phone": (_PHONE, _phone_valid),
    "cn_id": (_CN_ID, cn_id_valid),
    "bank_card": (_BANK_CARD, _bank_card_valid),
    "ipv4": (_IPV4, _ipv4_valid),
    "ipv6": (_IPV6, _ipv6_valid),
    "url": (_URL, None),
}

# --- finding and redacting -----------------------------------------------------------------------


def find_pii(text: str, kinds: Iterable[str] = DEFAULT_PII_KINDS) -> list[PiiHit]:
    """Personal information in `text`: non-overlapping hits sorted by start.

    Where candidates of several kinds overlap, the more specific kind wins (see _PRECEDENCE),
    so a resident ID, mobile number or bank card is never also reported as a phone number.
    """
    order = _ordered_kinds((kinds,) if isinstance(kinds, str) else tuple(kinds))
    folded = text.translate(_FOLD) if _FULL_WIDTH.search(text) else text
    has_digit = _DIGIT.search(folded) is not None
    hits: list[PiiHit] = []  # kept sorted by start, so an overlap check looks at two neighbours
    for kind in order:
        if not _worth_scanning(kind, folded, has_digit):
            continue
        for start, end in _candidates(kind, folded):
            at = bisect.bisect_left(hits, start, key=lambda h: h.start)
            if (at and hits[at - 1].end > start) or (at < len(hits) and hits[at].start < end):
                continue
            hits.insert(at, PiiHit(kind, start, end, text[start:end]))
    return hits


@lru_cache(maxsize=64)
def _ordered_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    unknown = sorted(set(kinds) - set(PII_KINDS))
    if unknown:
        raise ValueError(f"unknown PII kind(s) {unknown}; known kinds: {', '.join(PII_KINDS)}")
    return tuple(k for k in _PRECEDENCE if k in kinds)


def _worth_scanning(kind: str, text: str, has_digit: bool) -> bool:
    """A cheap necessary condition for a kind to occur, checked before its regex runs."""
    if kind == "email":
        return "@" in text
    if kind == "url":
        return "://" in text or "www." in text
    if kind == "ipv6":
        return ":" in text
    return has_digit


def _candidates(kind: str, text: str) -> Iterable[tuple[int, int]]:
    pattern, valid = _KINDS[kind]
    for m in pattern.finditer(text):
        span = m.group()
        if kind == "url":
            span = _url_trim(span)
        elif kind == "ipv6" and not _ipv6_valid(span) and span.endswith(":"):
            span = span.rstrip(":")  # "fe80::1:" at the end of a clause
        if valid is None or valid(span):
            yield m.start(), m.start() + len(span)


def redact_pii(text: str, kinds: Iterable[str] = DEFAULT_PII_KINDS) -> tuple[str, list[PiiHit]]:
    """Replace each hit with a typed placeholder ([EMAIL], [CN_ID], ...); return text and hits."""
    hits = find_pii(text, kinds)
    parts, last = [], 0
    for hit in hits:
        parts += [text[last : hit.start], f"[{hit.kind.upper()}]"]
        last = hit.end
    parts.append(text[last:])
    return "".join(parts), hits


# --- sensitive words -----------------------------------------------------------------------------


class SensitiveWords:
    """A compiled word list: finds which words occur in a text, case-insensitively.

    The words are compiled into one regex shaped like a trie ("ab(?:c|d)" rather than
    "abc|abd"), so a search costs about one step per character whatever the list length.
    Words are matched as substrings (no word boundaries), which is what Chinese needs.
    """

    def __init__(self, words: Iterable[str]) -> None:
        self._original: dict[str, str] = {}
        for word in words:
            if word and word.lower() not in self._original:
                self._original[word.lower()] = word
        trie: dict = {}
        for key in self._original:
            node = trie
            for ch in key:
                node = node.setdefault(ch, {})
            node[""] = True
        # The lookahead finds the longest word starting at every position, overlaps included;
        # shorter words that are prefixes of it are added from `_prefixes`.
        body = _trie_regex(trie) if trie else "(?!)"
        self._pattern = re.compile(f"(?=({body}))", re.IGNORECASE)
        self._prefixes = {
            k: [p for p in _prefixes(k) if p in self._original] for k in self._original
        }

    def find(self, text: str) -> list[str]:
        """Words of the list found in `text`, each once, in order of first occurrence."""
        found: dict[str, None] = {}
        for m in self._pattern.finditer(text):
            # .get: a case-folding oddity ("İ".lower() is two characters) must not crash
            for key in self._prefixes.get(m.group(1).lower(), ()):
                found.setdefault(self._original[key])
        return list(found)


def _prefixes(word: str) -> list[str]:
    return [word[:i] for i in range(1, len(word) + 1)]


def _trie_regex(node: dict) -> str:
    ends_here = "" in node
    branches = [re.escape(ch) + _trie_regex(child) for ch, child in node.items() if ch != ""]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if ends_here:  # greedy optional: the longer word is tried first
        body = (body if len(branches) > 1 or len(branches[0]) == 1 else f"(?:{body})") + "?"
    return body


@lru_cache(maxsize=16)
def _compiled_words(words: tuple[str, ...]) -> SensitiveWords:
    return SensitiveWords(words)


def find_sensitive_words(text: str, words: Iterable[str]) -> list[str]:
    """Words from `words` that occur in `text` (case-insensitive substring match).

    Returns the words as given, each once, in order of first occurrence. The compiled list is
    cached, so calling this per record with the same list is cheap; for many lists build a
    `SensitiveWords` once instead.
    """
    return _compiled_words(tuple(words)).find(text)
