"""Augment conversations: character noise, synonym replacement, paraphrase and back-translation.

Noise and synonyms are rule-based and seeded; paraphrase and back-translation go through a
`ChatClient` (a local model or an OpenAI-compatible API). Placeholders left by PII masking
(`[EMAIL]`, `<PHONE>`, `{name}`), URLs and digits are never altered, so a masked or numeric
fact survives augmentation. New records carry their origin (source file, line, method, variant);
the originals are never modified.

CJK text: noise only swaps two neighbouring CJK characters (a common typing slip that keeps
every character); deleting or doubling a character would too often change the word. Synonyms
match whole words in space-separated scripts and substrings in CJK, which has no word breaks.
"""

from __future__ import annotations

import copy
import logging
import random
import re
from collections import Counter
from collections.abc import Sequence

from tunesmith.data.formats import Conversation
from tunesmith.data.synth import CJK_CHARS
from tunesmith.utils.llm import ChatClient

log = logging.getLogger(__name__)

METHODS = ("noise", "synonym", "paraphrase", "backtranslate")
ROLES = ("system", "user", "assistant")
PARAPHRASE = (
    "Paraphrase the following text: keep its meaning, its language and any placeholder such as "
    "[EMAIL] or number exactly as it is. Reply with the paraphrase only."
)
TRANSLATE = (
    "Translate the following text into {language}. Keep any placeholder such as [EMAIL] and "
    "every number exactly as it is. Reply with the translation only."
)
_PROTECTED = re.compile(
    r"\[[A-Z][A-Z0-9_]*\]|<[A-Z][A-Z0-9_]*>|\{\{?\s*\w+\s*\}?\}|https?://\S+|\d+"
)
_CJK = re.compile(f"[{CJK_CHARS}]")
_QUOTES = "\"'“”‘’「」"


def char_noise(text: str, rate: float = 0.03, rng: random.Random | None = None) -> str:
    """Typos in about `rate` of the letters (at least one): swap with the next letter, delete or
    double a Latin letter; swap neighbouring CJK characters only. Placeholders and digits stay."""
    rng = rng or random.Random(0)
    letters = [i for i in _free_indices(text) if text[i].isalpha()]
    if rate <= 0 or not letters:
        return text
    picks = set(rng.sample(letters, min(len(letters), max(1, round(rate * len(letters))))))
    free = set(letters)
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if i not in picks:
            out.append(char)
            i += 1
            continue
        cjk = bool(_CJK.match(char))
        op = "swap" if cjk else rng.choice(("swap", "delete", "double"))
        nxt = i + 1
        can_swap = nxt in free and nxt not in picks and text[nxt] != char
        can_swap = can_swap and bool(_CJK.match(text[nxt])) == cjk  # never mix scripts
        if op == "swap" and can_swap:
            out += [text[nxt], char]
            i += 2
            continue
        if op == "swap":
            op = "keep" if cjk else "double"
        out += {"delete": [], "double": [char, char], "keep": [char]}[op]
        i += 1
    return "".join(out)


def synonym_replace(
    text: str,
    synonyms: dict[str, list[str]],
    rate: float = 0.2,
    rng: random.Random | None = None,
) -> str:
    """Replace about `rate` of the words found in `synonyms` (at least one) by a random synonym.

    Latin keys match whole words, case-insensitively, and the replacement takes the word's case;
    CJK keys match as substrings. Longer keys win over keys they contain.
    """
    rng = rng or random.Random(0)
    table = _synonym_table(synonyms)
    if rate <= 0 or not table:
        return text
    pattern = _synonym_pattern(table)
    free = _free_indices(text)
    matches = [
        m for m in pattern.finditer(text) if all(i in free for i in range(m.start(), m.end()))
    ]
    if not matches:
        return text
    chosen = rng.sample(matches, min(len(matches), max(1, round(rate * len(matches)))))
    for m in sorted(chosen, key=lambda m: m.start(), reverse=True):  # right to left: offsets hold
        word = m.group()
        new = _match_case(rng.choice(table[word.lower()]), word)
        text = text[: m.start()] + new + text[m.end() :]
    return text


def paraphrase(
    texts: list[str],
    client: ChatClient,
    instruction: str = PARAPHRASE,
    back_translate_via: str | None = None,
    source_language: str | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
) -> list[str]:
    """One rewording per text through the model ("" where it answered nothing).

    With `back_translate_via` (a language name, or "auto": English for CJK text, French
    otherwise) each text is translated into that pivot language and back to `source_language`
    (default: guessed from the script; English for Latin text).
    """
    if back_translate_via is None:
        return _ask(client, [instruction] * len(texts), texts, max_new_tokens, temperature)
    pivots = [_pivot(t) if back_translate_via == "auto" else back_translate_via for t in texts]
    # The way out is greedy (a faithful translation); the way back samples, for variety.
    there = _ask(client, [TRANSLATE.format(language=p) for p in pivots], texts, max_new_tokens, 0.0)
    back = [TRANSLATE.format(language=source_language or _language(t)) for t in texts]
    return _ask(client, back, there, max_new_tokens, temperature)


def augment_records(
    conversations: Sequence[Conversation],
    methods: Sequence[str],
    n_per_record: int = 1,
    seed: int = 42,
    client: ChatClient | None = None,
    synonyms: dict[str, list[str]] | None = None,
    fields: Sequence[str] = ("user",),
    noise_rate: float = 0.03,
    synonym_rate: float = 0.2,
    pivot: str = "auto",
) -> list[dict]:
    """`n_per_record` new conversations per record and method, as
    {"messages": [...], "origin": {"source", "line", "method", "variant"}}.

    Only the messages whose role is in `fields` change. A variant identical to its record or to
    an earlier variant, or one the model answered with nothing, is not written (counted in the
    log). The same inputs and seed give the same rule-based variants.
    """
    _check_args(methods, fields, client, synonyms, n_per_record)
    opts = {
        "client": client,
        "synonyms": synonyms,
        "noise_rate": noise_rate,
        "synonym_rate": synonym_rate,
        "pivot": pivot,
    }
    out: list[dict] = []
    skipped: Counter = Counter()
    for method in methods:
        jobs = [(i, k) for i in range(len(conversations)) for k in range(n_per_record)]
        variants = _variants(method, conversations, jobs, fields, seed, opts)
        seen: set[tuple[int, str]] = set()
        for (i, k), messages in zip(jobs, variants, strict=True):
            conv = conversations[i]
            key = (i, repr(messages))
            if messages is None or messages == conv.messages or key in seen:
                skipped[method] += 1
                continue
            seen.add(key)
            origin = {"source": conv.source, "line": conv.line, "method": method, "variant": k}
            out.append({"messages": messages, "origin": origin})
    if skipped:
        log.warning(
            "augment: variants not written (unchanged, duplicate or empty): %s", dict(skipped)
        )
    return out


def _variants(
    method: str,
    conversations: Sequence[Conversation],
    jobs: list[tuple[int, int]],
    fields: Sequence[str],
    seed: int,
    opts: dict,
) -> list[list[dict] | None]:
    """New messages per job (record index, variant number); None where the model gave nothing."""
    slots = [
        (j, m)
        for j, (i, _) in enumerate(jobs)
        for m, msg in enumerate(conversations[i].messages)
        if msg["role"] in fields
    ]
    texts = [conversations[jobs[j][0]].messages[m]["content"] for j, m in slots]
    if method in ("paraphrase", "backtranslate"):
        via = opts["pivot"] if method == "backtranslate" else None
        new_texts = paraphrase(texts, opts["client"], back_translate_via=via)
    else:
        new_texts = [
            _rule_based(method, text, random.Random(f"{seed}:{method}:{jobs[j]}:{m}"), opts)
            for (j, m), text in zip(slots, texts, strict=True)
        ]
    variants = [copy.deepcopy(conversations[i].messages) for i, _ in jobs]
    for (j, m), text in zip(slots, new_texts, strict=True):
        if not text.strip():
            variants[j] = None
        elif variants[j] is not None:
            variants[j][m]["content"] = text
    return variants


def _rule_based(method: str, text: str, rng: random.Random, opts: dict) -> str:
    if method == "noise":
        return char_noise(text, opts["noise_rate"], rng)
    return synonym_replace(text, opts["synonyms"], opts["synonym_rate"], rng)


def _check_args(methods, fields, client, synonyms, n_per_record) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown augment method(s) {unknown}; allowed: {', '.join(METHODS)}")
    bad_roles = [f for f in fields if f not in ROLES]
    if bad_roles or not fields:
        raise ValueError(f"unknown field(s) {bad_roles}; allowed roles: {', '.join(ROLES)}")
    needs_model = sorted({"paraphrase", "backtranslate"} & set(methods))
    if needs_model and client is None:
        raise ValueError(f"augment method(s) {needs_model} need a model (--model)")
    if "synonym" in methods and not synonyms:
        raise ValueError("augment method 'synonym' needs a synonym table ({word: [synonyms]})")
    if n_per_record < 1:
        raise ValueError(f"n_per_record must be at least 1, got {n_per_record}")


def _free_indices(text: str) -> set[int]:
    """Indices of characters outside placeholders, URLs and numbers."""
    taken = {i for m in _PROTECTED.finditer(text) for i in range(m.start(), m.end())}
    return set(range(len(text))) - taken


def _synonym_table(synonyms: dict[str, list[str]]) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for word, alternatives in synonyms.items():
        if isinstance(alternatives, str):
            alternatives = [alternatives]  # {"big": "large"} is a natural way to write one
        others = [a for a in alternatives if a and a.lower() != word.lower()]
        if word.strip() and others:
            table.setdefault(word.lower(), []).extend(others)
    return table


def _synonym_pattern(table: dict[str, list[str]]) -> re.Pattern:
    def one(word: str) -> str:
        escaped = re.escape(word)
        return escaped if _CJK.search(word) else rf"(?<!\w){escaped}(?!\w)"

    return re.compile("|".join(one(w) for w in sorted(table, key=len, reverse=True)), re.I)


def _match_case(new: str, old: str) -> str:
    if len(old) > 1 and old.isupper():
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def _ask(client, instructions, texts, max_new_tokens, temperature) -> list[str]:
    """One chat per text; blank texts are not sent and stay blank."""
    todo = [i for i, t in enumerate(texts) if t.strip()]
    prompts = [[{"role": "user", "content": f"{instructions[i]}\n\n{texts[i]}"}] for i in todo]
    answers = client.chat(prompts, max_new_tokens=max_new_tokens, temperature=temperature)
    results = [""] * len(texts)
    for i, answer in zip(todo, answers, strict=True):
        results[i] = _unquote(answer.strip())
    return results


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        return text[1:-1].strip()
    return text


def _language(text: str) -> str:
    # Scripts are enough to tell the CJK languages apart; kana marks Japanese.
    if re.search("[\u3040-\u30ff]", text):
        return "Japanese"
    if _CJK.search(text):
        return "Chinese"
    if re.search("[\uac00-\ud7af]", text):
        return "Korean"
    return "English"


def _pivot(text: str) -> str:
    return "French" if _language(text) == "English" else "English"
