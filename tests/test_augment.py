"""Augmentation: character noise, synonyms, paraphrase / back-translation, and record lineage."""

from __future__ import annotations

import copy
import json
import logging
import random
import re

import pytest
from test_llm_client import completion, serve

from tunesmith.data.augment import (
    augment_records,
    char_noise,
    paraphrase,
    synonym_replace,
)
from tunesmith.data.formats import load_conversations
from tunesmith.runs.inference import make_client

PROTECTED = "Mail [EMAIL] or call <PHONE> about order 20240517 for {name} at https://x.io/a?b=1"


def test_char_noise_never_touches_placeholders_digits_or_urls():
    changed = 0
    for seed in range(30):
        noisy = char_noise(PROTECTED, rate=0.5, rng=random.Random(seed))
        for kept in ("[EMAIL]", "<PHONE>", "20240517", "{name}", "https://x.io/a?b=1"):
            assert kept in noisy
        assert re.sub(r"\D", "", noisy) == re.sub(r"\D", "", PROTECTED)
        changed += noisy != PROTECTED
    assert changed == 30  # at least one edit whenever a letter is free to change


def test_char_noise_latin_edits_are_small_and_seeded():
    text = "The quick brown fox jumps over the lazy dog again and again"
    letters = sum(c.isalpha() for c in text)
    a = char_noise(text, rate=0.1, rng=random.Random(3))
    assert a == char_noise(text, rate=0.1, rng=random.Random(3))
    assert a != text
    # round(0.1 * letters) edits at most, each adding or removing at most one character
    assert abs(len(a) - len(text)) <= round(0.1 * letters)
    outputs = {char_noise(text, rate=0.1, rng=random.Random(s)) for s in range(10)}
    assert len(outputs) > 1
    assert char_noise(text, rate=0.0) == text
    assert char_noise("123 [EMAIL] !!", rate=1.0) == "123 [EMAIL] !!"


def test_char_noise_only_swaps_cjk_characters():
    text = "今天的天气非常好，我们一起去公园散步吧"
    for seed in range(10):
        noisy = char_noise(text, rate=0.2, rng=random.Random(seed))
        assert sorted(noisy) == sorted(text)  # no character lost or doubled
        assert noisy != text


SYNONYMS = {"big": ["large", "huge"], "email": ["mail"], "很好": ["不错"], "new york": ["NYC"]}


def test_synonym_replace_whole_words_with_case():
    text = "Big dogs, BIG cats and big birds; bigger is not a match."
    out = synonym_replace(text, {"big": ["large"]}, rate=1.0)
    assert out == "Large dogs, LARGE cats and large birds; bigger is not a match."


def test_synonym_replace_cjk_substrings_placeholders_and_longest_key():
    assert synonym_replace("今天天气很好", SYNONYMS, rate=1.0) == "今天天气不错"
    assert synonym_replace("Send an email to [EMAIL]", SYNONYMS, 1.0) == "Send an mail to [EMAIL]"
    table = {"new": ["fresh"], "new york": ["NYC"]}
    assert synonym_replace("a new shop in New York", table, 1.0) == "a fresh shop in NYC"


def test_synonym_replace_rate_and_edge_cases():
    text = " ".join(["big"] * 10)
    out = synonym_replace(text, {"big": ["large"]}, rate=0.2, rng=random.Random(1))
    assert out.split().count("large") == 2
    # at least one replacement when anything matches, none when nothing can change
    assert synonym_replace("a big day", {"big": "large"}, rate=0.01) == "a large day"
    assert synonym_replace("a big day", {"big": ["big", "BIG"]}, rate=1.0) == "a big day"
    assert synonym_replace("nothing here", SYNONYMS, rate=1.0) == "nothing here"


class Recorder:
    """A fake model that records prompts and answers with a function of the prompt."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def chat(self, conversations, max_new_tokens=256, temperature=0.7):
        self.calls.append(([c[-1]["content"] for c in conversations], temperature))
        return [self.answer(c[-1]["content"]) for c in conversations]


def test_paraphrase_directly():
    model = Recorder(lambda p: '"' + p.split("\n\n", 1)[1].upper() + '"')
    assert paraphrase(["hello there", "", "bye"], model) == ["HELLO THERE", "", "BYE"]
    prompts, _ = model.calls[0]
    assert len(prompts) == 2  # blank texts are not sent
    assert prompts[0].startswith("Paraphrase") and prompts[0].endswith("\n\nhello there")


def test_back_translation_goes_through_the_pivot_and_back():
    def translate(prompt):
        language = re.search(r"into (\w+)", prompt).group(1)
        return f"<{language}> " + prompt.split("\n\n", 1)[1]

    model = Recorder(translate)
    out = paraphrase(["good morning", "早上好"], model, back_translate_via="auto")
    assert out == ["<English> <French> good morning", "<Chinese> <English> 早上好"]
    (there, t1), (_, t2) = model.calls
    assert t1 == 0.0 and t2 == 0.7  # faithful out, varied back
    assert "into French" in there[0] and "into English" in there[1]
    out = paraphrase(["hi"], Recorder(translate), back_translate_via="German")
    assert out == ["<English> <German> hi"]


@pytest.fixture
def conversations(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [
        {"instruction": "Is this a big deal for [EMAIL]?", "output": "Not a big deal."},
        {
            "messages": [
                {"role": "system", "content": "Be kind and big-hearted."},
                {"role": "user", "content": "Tell me about big cities"},
                {"role": "assistant", "content": "Big cities are busy."},
            ]
        },
    ]
    path.write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    other = tmp_path / "chat.jsonl"
    other.write_text(json.dumps(rows[1]) + "\n", encoding="utf-8")
    convs, _ = load_conversations([path])
    more, _ = load_conversations([other])
    return convs + more


def test_augment_records_keeps_lineage_and_originals(conversations, tmp_path):
    before = copy.deepcopy([c.messages for c in conversations])
    table = {"big": ["large", "huge"]}
    out = augment_records(conversations, ["noise", "synonym"], 1, seed=5, synonyms=table)
    assert [c.messages for c in conversations] == before
    assert sorted((r["origin"]["method"], r["origin"]["source"]) for r in out) == sorted(
        (m, c.source) for m in ("noise", "synonym") for c in conversations
    )
    assert {(r["origin"]["line"], r["origin"]["variant"]) for r in out} == {(1, 0)}
    for record in out:
        original = next(c for c in conversations if c.source == record["origin"]["source"])
        pairs = list(zip(original.messages, record["messages"], strict=True))
        assert all(a == b for a, b in pairs if a["role"] != "user")  # only user turns change
        assert any(a != b for a, b in pairs if a["role"] == "user")
    first = [r for r in out if r["origin"]["source"] == conversations[0].source]
    assert len(first) == 2 and all("[EMAIL]" in r["messages"][0]["content"] for r in first)
    # The new records are valid conversations a reader loads back.
    path = tmp_path / "aug.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    _, stats = load_conversations([path])
    assert stats["kept"] == len(out) == 4


def test_augment_records_variants_of_a_record_are_distinct(conversations):
    out = augment_records(conversations, ["noise"], 6, seed=0, noise_rate=0.05)
    for conv in conversations:
        texts = [r["messages"] for r in out if r["origin"]["source"] == conv.source]
        assert 1 <= len(texts) <= 6
        assert len({json.dumps(t) for t in texts}) == len(texts)  # duplicates are not written
        assert conv.messages not in texts
    assert {r["origin"]["variant"] for r in out} <= set(range(6))


def test_augment_records_is_seeded(conversations):
    def run(seed):
        return augment_records(conversations, ["noise"], 3, seed=seed)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_augment_records_fields_choose_the_roles(conversations):
    out = augment_records(
        conversations[1:], ["synonym"], synonyms={"big": ["large"]}, fields=("assistant",)
    )
    [record] = out
    assert record["messages"][-1]["content"] == "Large cities are busy."
    assert record["messages"][:-1] == conversations[1].messages[:-1]


def test_augment_records_skips_unchanged_variants(conversations, caplog):
    with caplog.at_level(logging.WARNING):
        out = augment_records(conversations, ["synonym"], 2, synonyms={"zebra": ["horse"]})
    assert out == []
    assert "synonym" in caplog.text and "4" in caplog.text


def test_augment_records_paraphrase_through_an_endpoint(conversations):
    def respond(method, path, body, headers):
        text = body["messages"][-1]["content"].split("\n\n", 1)[1]
        return 200, completion("" if "cities" in text else f"In other words: {text}")

    with serve(respond) as (url, seen):
        out = augment_records(conversations, ["paraphrase"], client=make_client(f"{url}#m"))
    # The second record's only user turn got an empty paraphrase: no variant for it.
    [record] = out
    assert record["messages"][0]["content"] == "In other words: Is this a big deal for [EMAIL]?"
    assert record["origin"] == {
        "source": conversations[0].source,
        "line": 1,
        "method": "paraphrase",
        "variant": 0,
    }
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ["typo"]}, "unknown augment method"),
        ({"methods": ["paraphrase"]}, "need a model"),
        ({"methods": ["backtranslate"]}, "need a model"),
        ({"methods": ["synonym"]}, "needs a synonym table"),
        ({"methods": ["noise"], "fields": ("tool",)}, "unknown field"),
        ({"methods": ["noise"], "n_per_record": 0}, "at least 1"),
    ],
)
def test_augment_records_rejects_bad_arguments(conversations, kwargs, message):
    with pytest.raises(ValueError, match=message):
        augment_records(conversations, **kwargs)
