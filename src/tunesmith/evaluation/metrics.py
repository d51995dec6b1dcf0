"""Generation metrics with a per-item score for every metric, so comparisons can be bootstrapped.

BLEU and chrF come from sacrebleu (its "zh" tokenizer for Chinese). ROUGE is computed here:
rouge-score's tokenizer keeps only [a-z0-9] and so drops every Chinese character. Our ROUGE
tokens are one token per CJK character (no dictionary, so scores do not depend on a jieba
version) and lowercase [a-z0-9]+ runs for everything else, which equals rouge-score without
stemming on English text. Scores are 0..100 like sacrebleu's; exact match is 0/1.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

import numpy as np

from tunesmith.utils.errors import ConfigError, DataError

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_TOKEN = re.compile(f"[{_CJK}]|[a-z0-9]+")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_LATIN_WORD = re.compile(r"[A-Za-z0-9\u00c0-\u024f]+(?:['’-][A-Za-z\u00c0-\u024f]+)*")
LANGS = ("auto", "zh", "en")
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def tokenize(text: str) -> list[str]:
    """ROUGE tokens: each CJK character, and lowercase ASCII letter/digit runs."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def count_words(text: str) -> int:
    """Words as a reader counts them: Latin words plus CJK characters (one each)."""
    return len(_CJK_CHAR.findall(text)) + len(_LATIN_WORD.findall(text))


def detect_lang(texts: list[str]) -> str:
    """ "zh" when the texts hold at least as many CJK characters as Latin words, else "en"."""
    cjk = sum(len(_CJK_CHAR.findall(t)) for t in texts)
    words = sum(len(_LATIN_WORD.findall(t)) for t in texts)
    return "zh" if cjk and cjk >= words else "en"


# --- ROUGE ---------------------------------------------------------------------------------------


def _f1(overlap: float, n_pred: int, n_ref: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 100.0 * 2 * precision * recall / (precision + recall)


def rouge_n(pred: list[str], ref: list[str], n: int) -> float:
    """ROUGE-N F1 (0..100) over token lists: clipped n-gram overlap."""
    grams_p = Counter(zip(*(pred[i:] for i in range(n)), strict=False))
    grams_r = Counter(zip(*(ref[i:] for i in range(n)), strict=False))
    overlap = sum((grams_p & grams_r).values())
    return _f1(overlap, sum(grams_p.values()), sum(grams_r.values()))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (one row of the DP table kept)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(pred: list[str], ref: list[str]) -> float:
    """ROUGE-L F1 (0..100): sentence-level LCS, as rouge-score's "rougeL"."""
    return _f1(lcs_length(pred, ref), len(pred), len(ref))


# --- sacrebleu -----------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _bleu(lang: str, sentence: bool):
    from sacrebleu.metrics import BLEU

    # effective order: a short sentence without 4-gram matches still gets a useful score
    return BLEU(tokenize="zh" if lang == "zh" else "13a", effective_order=sentence)


@lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def chrf_sentence(pred: str, ref: str) -> float:
    return float(_chrf().sentence_score(pred, [ref]).score)


# --- public --------------------------------------------------------------------------------------


def exact_match(pred: str, ref: str) -> float:
    """1.0 when equal after trimming, lowercasing and collapsing whitespace."""
    return float(" ".join(pred.lower().split()) == " ".join(ref.lower().split()))


def generation_scores(
    predictions: list[str], references: list[str], lang: str = "auto"
) -> dict[str, list[float]]:
    """Per-item bleu, chrf, rouge1, rouge2, rougeL (0..100) and exact_match (0/1)."""
    lang = _check(predictions, references, lang)
    bleu = _bleu(lang, True)
    scores: dict[str, list[float]] = {k: [] for k in ("bleu", "chrf", *ROUGE_KEYS, "exact_match")}
    for pred, ref in zip(predictions, references, strict=True):
        tp, tr = tokenize(pred), tokenize(ref)
        scores["bleu"].append(float(bleu.sentence_score(pred, [ref]).score))
        scores["chrf"].append(chrf_sentence(pred, ref))
        scores["rouge1"].append(rouge_n(tp, tr, 1))
        scores["rouge2"].append(rouge_n(tp, tr, 2))
        scores["rougeL"].append(rouge_l(tp, tr))
        scores["exact_match"].append(exact_match(pred, ref))
    return scores


def corpus_scores(
    predictions: list[str], references: list[str], lang: str = "auto"
) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu); ROUGE and exact match as means of the item scores."""
    lang = _check(predictions, references, lang)
    if not predictions:
        raise DataError("no predictions to score: the test set is empty")
    items = generation_scores(predictions, references, lang)
    return {
        "bleu": float(_bleu(lang, False).corpus_score(predictions, [references]).score),
        "chrf": float(_chrf().corpus_score(predictions, [references]).score),
        **{k: float(np.mean(items[k])) for k in (*ROUGE_KEYS, "exact_match")},
    }


def _check(predictions: list[str], references: list[str], lang: str) -> str:
    if len(predictions) != len(references):
        raise DataError(
            f"{len(predictions)} predictions but {len(references)} references: "
            "every prediction needs exactly one reference"
        )
    if lang not in LANGS:
        raise ConfigError(f"lang '{lang}' is not supported; use one of {', '.join(LANGS)}")
    return detect_lang(references + predictions) if lang == "auto" else lang


# --- embeddings ----------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _encoder(encoder_ref: str):
    from transformers import AutoModel, AutoTokenizer

    from tunesmith.models.resolve import resolve_model

    path = resolve_model(encoder_ref).path
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed(texts: list[str], encoder_ref: str = "minilm-l6", batch_size: int = 32) -> np.ndarray:
    """Mean-pooled (padding excluded), L2-normalized sentence embeddings, one row per text."""
    import torch

    tokenizer, model = _encoder(encoder_ref)
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(rows).numpy() if rows else np.zeros((0, 0), dtype=np.float32)


def embedding_similarity(
    predictions: list[str], references: list[str], encoder_ref: str = "minilm-l6"
) -> list[float]:
    """Cosine similarity (-1..1) of each prediction with its reference, by the MiniLM encoder."""
    _check(predictions, references, "en")
    if not predictions:
        return []
    vectors = embed(predictions + references, encoder_ref)
    n = len(predictions)
    return [float(v) for v in np.sum(vectors[:n] * vectors[n:], axis=1)]


# --- lengths -------------------------------------------------------------------------------------


def length_stats(texts: list[str]) -> dict:
    """mean, median, p95, min, max of lengths in characters and in words (CJK char = a word)."""

    def describe(values: list[int]) -> dict[str, float | None]:
        if not values:
            return dict.fromkeys(("mean", "median", "p95", "min", "max"))
        arr = np.asarray(values, dtype=float)
        return {
            "mean": float(arr.mean()),
            "median": float(np.median(arr)),
            "p95": float(np.percentile(arr, 95)),
            "min": float(arr.min()),
            "max": float(arr.max()),
        }

    return {
        "n": len(texts),
        "chars": describe([len(t) for t in texts]),
        "words": describe([count_words(t) for t in texts]),
    }
