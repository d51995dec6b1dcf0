"""Exact and near-duplicate detection."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import string
import subprocess
import sys

import numpy as np
import pytest

from tunesmith.data.quality.dedup import (
    canonical_text,
    content_hash,
    exact_duplicate_groups,
    minhash_signatures,
    near_duplicate_groups,
)

_RNG = random.Random(0)
VOCAB = ["".join(_RNG.choices(string.ascii_lowercase, k=_RNG.randint(2, 8))) for _ in range(400)]
HAN = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 800))  # the first 800 CJK ideographs


def english_text(rng: random.Random, words: int = 40) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def chinese_text(rng: random.Random, chars: int = 200) -> str:
    return "".join(rng.choice(HAN) for _ in range(chars))


def edit(text: str, rng: random.Random, changes: int) -> str:
    chars = list(text)
    for _ in range(changes):
        chars[rng.randrange(len(chars))] = rng.choice("xyz数据")
    return "".join(chars)


# --- content hash and exact duplicates -----------------------------------------------------------


def test_content_hash_pinned_to_blake2b_of_canonical_text():
    expected = hashlib.blake2b(b"helloworld", digest_size=16).hexdigest()
    assert content_hash("  Hello\tWORLD \n") == expected
    zh = hashlib.blake2b("你好，世界！".encode(), digest_size=16).hexdigest()
    assert content_hash("你好, 世界!") == zh == content_hash("你好，世界！")


def test_content_hash_same_in_other_processes():
    code = "from tunesmith.data.quality.dedup import content_hash; print(content_hash('Ab c'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {content_hash("Ab c")}


def test_exact_groups_ignore_whitespace_and_case():
    texts = ["Hello World", "other", "hello   world", "HELLO\nWORLD", "other ", "unique"]
    assert exact_duplicate_groups(texts) == [[0, 2, 3], [1, 4]]


def test_exact_groups_none_and_empty():
    assert exact_duplicate_groups(["a", "b", "c"]) == []
    assert exact_duplicate_groups([]) == []


def test_canonical_text_applies_normalization():
    assert canonical_text(" Ｈｅｌｌｏ , 你好,世界 ") == "hello,你好，世界"


# --- near duplicates -----------------------------------------------------------------------------


def test_planted_near_duplicates_found_and_unrelated_texts_apart():
    rng = random.Random(0)
    base = [english_text(rng) for _ in range(20)]
    texts = [*base, edit(base[3], rng, 1), edit(base[11], rng, 2), base[7].upper()]
    assert near_duplicate_groups(texts) == [[3, 20], [7, 22], [11, 21]]


def test_chinese_near_duplicates_found():
    rng = random.Random(1)
    base = [chinese_text(rng) for _ in range(10)]
    texts = [*base, edit(base[2], rng, 2), base[5] + "。"]
    assert near_duplicate_groups(texts) == [[2, 10], [5, 11]]


def test_short_texts_are_one_shingle():
    texts = ["abc", "ABC", "abd", "", " ", "x"]
    assert near_duplicate_groups(texts) == [[0, 1], [3, 4]]


def test_exact_duplicates_are_near_duplicates():
    rng = random.Random(2)
    texts = [english_text(rng) for _ in range(30)]
    texts += [texts[4], " " + texts[4].upper(), texts[9]]
    groups = near_duplicate_groups(texts)
    for group in exact_duplicate_groups(texts):
        assert group in groups


def test_near_duplicate_groups_deterministic():
    rng = random.Random(3)
    base = [english_text(rng) for _ in range(50)]
    texts = base + [edit(t, rng, 2) for t in base[:10]]
    first = near_duplicate_groups(texts)
    assert first == near_duplicate_groups(list(texts))
    assert len(first) == 10


def test_a_large_bucket_of_templated_records_becomes_one_group():
    rng = random.Random(4)
    template = english_text(rng, 60)
    texts = [edit(template, rng, 2) for _ in range(2000)] + [english_text(rng) for _ in range(5)]
    assert near_duplicate_groups(texts) == [list(range(2000))]


def test_threshold_one_groups_only_identical_shingle_sets():
    texts = ["the quick brown fox", "the quick brown fox", "the quick brown fix"]
    assert near_duplicate_groups(texts, threshold=1.0) == [[0, 1]]


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0.0}, {"threshold": 1.5}, {"ngram": 0}, {"num_perm": 1}]
)
def test_invalid_parameters_rejected(kwargs):
    with pytest.raises(ValueError):
        near_duplicate_groups(["a", "b"], **kwargs)


def test_minhash_estimates_jaccard():
    # Two texts of distinct characters (ngram=1): the true Jaccard is known exactly.
    shared, only_a, only_b = "abcdefghijklmnopqrstuvwxyz"[:18], "ABCDEFGH", "01234567"
    true_jaccard = 18 / (18 + 8 + 8)
    sig = minhash_signatures([shared + only_a, shared + only_b], 1, 1024, 5)
    estimate = np.mean(sig[0] == sig[1])
    assert abs(estimate - true_jaccard) < 0.06


def test_long_text_signature_equals_batched_signature():
    rng = random.Random(6)
    long_text = chinese_text(rng, 30000)
    alone = minhash_signatures([long_text], 5, 64, 1)
    together = minhash_signatures(["abc", long_text, "def"], 5, 64, 1)
    assert (alone[0] == together[1]).all()


def _pairs(groups: list[list[int]]) -> set[tuple[int, int]]:
    return {pair for g in groups for pair in itertools.combinations(sorted(g), 2)}


def test_precision_and_recall_on_planted_near_duplicates():
    rng = random.Random(42)
    texts = [english_text(rng) if i % 2 else chinese_text(rng, 200) for i in range(400)]
    source = list(range(400))
    for _ in range(100):  # copies with 1-3 characters changed: true Jaccard about 0.85-0.95
        source.append(rng.randrange(400))
        texts.append(edit(texts[source[-1]], rng, rng.randint(1, 3)))
    for k in range(50):  # hard negatives: a fifth rewritten, Jaccard about 0.65; not duplicates
        text = texts[rng.randrange(400)]
        cut = len(text) * 4 // 5
        fresh = english_text(rng) if text.isascii() else chinese_text(rng)
        texts.append(text[:cut] + fresh[: len(text) - cut])
        source.append(500 + k)
    n = len(texts)
    truth = {(i, j) for i, j in itertools.combinations(range(n), 2) if source[i] == source[j]}
    found = _pairs(near_duplicate_groups(texts))
    recall = len(found & truth) / len(truth)
    precision = len(found & truth) / len(found)
    assert recall >= 0.9, recall
    assert precision >= 0.95, precision
