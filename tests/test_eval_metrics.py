"""Generation metrics: hand-computed ROUGE on Chinese, rouge-score parity on English, sacrebleu."""

from __future__ import annotations

import random

import pytest

from tunesmith.evaluation.metrics import (
    corpus_scores,
    count_words,
    detect_lang,
    embedding_similarity,
    generation_scores,
    lcs_length,
    length_stats,
    tokenize,
)
from tunesmith.utils.errors import ConfigError, DataError


def test_tokenize_splits_chinese_per_character_and_lowercases_english():
    assert tokenize("我爱 Python3，Hello-World!") == ["我", "爱", "python3", "hello", "world"]
    assert tokenize("ＡＢＣ１２") == ["abc12"]  # full-width folded by NFKC


def test_rouge_on_chinese_matches_hand_computation():
    # pred 猫坐在垫子上 (6 chars) vs ref 猫在垫子上 (5 chars)
    # unigrams: overlap 5 -> P 5/6, R 1 -> F 10/11
    # bigrams: pred {猫坐 坐在 在垫 垫子 子上}, ref {猫在 在垫 垫子 子上}: overlap 3 -> P 3/5, R 3/4
    # LCS 猫在垫子上 = 5 -> same as unigram F
    s = generation_scores(["猫坐在垫子上"], ["猫在垫子上"], lang="zh")
    assert s["rouge1"][0] == pytest.approx(100 * 10 / 11)
    assert s["rouge2"][0] == pytest.approx(100 * 2 * 0.6 * 0.75 / 1.35)
    assert s["rougeL"][0] == pytest.approx(100 * 10 / 11)
    assert s["exact_match"] == [0.0]


def test_rouge_l_uses_subsequence_not_substring():
    # LCS of ABCBDAB and BDCABA is 4 (textbook example)
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    s = generation_scores(["今天 天气 很好"], ["今天很好"], lang="zh")
    # pred chars 今天天气很好 (6), ref 今天很好 (4), LCS 4 -> P 4/6, R 1 -> F 0.8
    assert s["rougeL"][0] == pytest.approx(80.0)


def test_rouge_equals_rouge_score_on_english():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    rng = random.Random(0)
    words = [
        *("the", "cat", "sat", "on", "a", "mat", "dog", "ran", "fast"),
        *("The", "Cat,", "mat.", "42"),
    ]
    preds = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(60)]
    refs = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(60)]
    ours = generation_scores(preds, refs, lang="en")
    for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
        theirs = scorer.score(r, p)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert ours[key][i] == pytest.approx(100 * theirs[key].fmeasure), (p, r, key)


def test_bleu_and_chrf_come_from_sacrebleu_with_chinese_tokenizer():
    import sacrebleu

    preds, refs = (
        ["我们今天去公园散步", "the cat is on the mat"],
        ["我们今天去公园", "the cat sat on the mat"],
    )
    items = generation_scores(preds, refs, lang="zh")
    expected = sacrebleu.sentence_bleu(preds[0], [refs[0]], tokenize="zh").score
    assert items["bleu"][0] == pytest.approx(expected)
    # the zh tokenizer splits characters: with 13a the Chinese sentence is a single token
    assert items["bleu"][0] > sacrebleu.sentence_bleu(preds[0], [refs[0]]).score
    corpus = corpus_scores(preds, refs, lang="zh")
    assert corpus["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(preds, [refs], tokenize="zh").score
    )
    assert corpus["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert corpus["rouge1"] == pytest.approx(sum(items["rouge1"]) / 2)


def test_identical_texts_score_100_and_exact_match_ignores_case_and_spacing():
    s = generation_scores(["Paris is  the capital."], ["paris is the capital. "])
    assert s["exact_match"] == [1.0]
    assert s["rouge1"] == [100.0] and s["rougeL"] == [100.0]
    same = generation_scores(["完全一样的句子"], ["完全一样的句子"])
    assert same["bleu"][0] == pytest.approx(100.0)
    assert same["chrf"][0] == pytest.approx(100.0)


def test_detect_lang_and_word_counts():
    assert detect_lang(["使用 Python 的 pandas 库读取 CSV 文件"]) == "zh"  # 10 CJK vs 3 words
    assert detect_lang(["The city of 北京 is the capital"]) == "en"  # 2 CJK vs 5 words
    assert detect_lang([""]) == "en"
    assert count_words("你好 world, it's fine") == 2 + 3


def test_length_stats_hand_computed():
    stats = length_stats(["ab", "abcd", "你好世界 ok", "x" * 10])
    assert stats["n"] == 4
    assert stats["chars"]["min"] == 2 and stats["chars"]["max"] == 10
    assert stats["chars"]["mean"] == pytest.approx((2 + 4 + 7 + 10) / 4)
    assert stats["chars"]["median"] == pytest.approx(5.5)
    assert stats["chars"]["p95"] == pytest.approx(7 + 0.85 * 3)  # numpy linear interpolation
    assert stats["words"]["max"] == 5  # 4 CJK characters + "ok"
    assert length_stats([])["chars"]["mean"] is None


def test_bad_input_is_a_clear_error():
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        generation_scores(["a", "b"], ["a"])
    with pytest.raises(ConfigError, match="lang 'fr'"):
        generation_scores(["a"], ["a"], lang="fr")
    with pytest.raises(DataError, match="empty"):
        corpus_scores([], [])


@pytest.mark.slow
def test_embedding_similarity_ranks_paraphrase_above_unrelated():
    sims = embedding_similarity(
        ["A cat is sitting on the mat.", "A cat is sitting on the mat.", "Stock prices fell."],
        ["The cat sits on the mat.", "A cat is sitting on the mat.", "The cat sits on the mat."],
    )
    assert sims[1] == pytest.approx(1.0, abs=1e-5)
    assert sims[0] > 0.8 > sims[2]
