"""Error patterns: failing prompts grouped by meaning, each labelled so a person can read it.

The prompts are embedded with the embedded MiniLM encoder (evaluation/metrics.embed: mean-pooled,
L2-normalized) and grouped by scikit-learn's agglomerative clustering with average linkage on
cosine distance, cut at `1 - threshold`: two groups merge while the mean cosine similarity
between their prompts is at least `threshold`. The result depends only on the prompts and their
order (no random start). Groups are numbered by size, largest first, ties by first appearance.

A pattern's label is its representative prompts (distinct texts, the medoid first: the prompt
with the highest mean similarity to the rest of its group) and its keywords: the words most
frequent in the group relative to all the failing prompts (count in group / (1 + count
outside)), stopwords, numbers and one-letter tokens left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Embedder = Callable[[list[str]], np.ndarray]

_STOPWORD_TEXT = (
    "a an the and or but if of to in on at for with from by about as into is are was were be "
    "been being do does did have has had i me my we our you your he she it its they them "
    "their this that these those what which who whom whose when where why how can could "
    "would should will shall may might must not no yes please tell give get there here than "
    "then so just also any some all very more most much many one "
    "的 了 吗 呢 吧 是 我 你 他 她 它 们 在 有 和 与 这 那 个 么 什 怎 请 问 能 可 以 一 不"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass
class Pattern:
    members: list[int]  # indices into the clustered texts, in input order
    representatives: list[int]  # medoid first, then the nearest to it
    keywords: list[str]
    cohesion: float  # mean pairwise cosine similarity (1.0 for one member)


def minilm_embedder(encoder: str = "minilm-l6") -> Embedder:
    """The embedded MiniLM encoder (or any encoder reference `embed` takes)."""
    from tunesmith.evaluation.metrics import embed

    return lambda texts: embed(texts, encoder)


def cluster(texts: list[str], embedder: Embedder, threshold: float) -> list[list[int]]:
    """Groups of indices of `texts` (see the module docstring), largest first."""
    if not texts:
        return []
    if len(texts) == 1:
        return [[0]]
    vectors = _normalized(embedder(texts))
    from sklearn.cluster import AgglomerativeClustering

    # cosine distances computed here: an all-zero vector (an empty prompt) is distance 1 from all
    distances = np.clip(1.0 - vectors @ vectors.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    labels = AgglomerativeClustering(
        n_clusters=None,
        metric="precomputed",
        linkage="average",
        distance_threshold=max(1e-9, 1.0 - threshold),
    ).fit_predict(distances)
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def describe(
    texts: list[str],
    groups: list[list[int]],
    embedder: Embedder,
    n_representatives: int = 3,
    n_keywords: int = 5,
) -> list[Pattern]:
    """Label each group: representatives, keywords, cohesion."""
    if not groups:
        return []
    vectors = _normalized(embedder(texts))
    words = [content_words(t) for t in texts]
    everywhere: Counter = Counter()
    for w in words:
        everywhere.update(set(w))
    patterns = []
    for group in groups:
        sims = vectors[group] @ vectors[group].T
        mean_sim = sims.mean(axis=1)
        medoid = int(np.argmax(mean_sim))  # first of equals: argmax is deterministic
        order = sorted(range(len(group)), key=lambda j: (j != medoid, -sims[medoid, j], j))
        shown, seen = [], set()
        for j in order:  # repeated prompts are shown once
            key = " ".join(texts[group[j]].lower().split())
            if key not in seen:
                seen.add(key)
                shown.append(group[j])
        inside: Counter = Counter()
        for i in group:
            inside.update(set(words[i]))
        ranked = sorted(
            inside, key=lambda w: (-inside[w] / (1 + everywhere[w] - inside[w]), -inside[w], w)
        )
        n = len(group)
        cohesion = float((sims.sum() - n) / (n * (n - 1))) if n > 1 else 1.0
        patterns.append(
            Pattern(
                members=list(group),
                representatives=shown[:n_representatives],
                keywords=ranked[:n_keywords],
                cohesion=round(cohesion, 4),
            )
        )
    return patterns


def _normalized(vectors) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms == 0, 1.0, norms)


def content_words(text: str) -> list[str]:
    """Tokens less stopwords, numbers and one-letter Latin tokens (keywords, topic checks)."""
    from tunesmith.data.synth import tokens

    return [
        t
        for t in tokens(text)
        if t not in _STOPWORDS and not t.isdigit() and (len(t) > 1 or not t.isascii())
    ]
