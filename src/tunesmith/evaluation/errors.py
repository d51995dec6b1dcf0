"""Error analysis: where a model fails, from per-item scores.

Worst-N examples per metric, and mean scores bucketed by prompt length (quantile buckets, the
same edges for every metric), by category, by label and by data source; for classification the
most-confused (true, predicted) pairs. Per-item scores are aligned with the items; None marks an
item a metric does not apply to.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tunesmith.evaluation.compare import Scores, higher_is_better

GROUP_FIELDS = ("category", "label", "source")


def worst_indices(scores: list[float | None], n: int, higher_better: bool = True) -> list[int]:
    """Indices of the n worst scored items, worst first (ties keep item order)."""
    scored = [(s, i) for i, s in enumerate(scores) if s is not None]
    scored.sort(key=lambda pair: (pair[0] if higher_better else -pair[0], pair[1]))
    return [i for _, i in scored[:n]]


def length_bucket_of(lengths: list[int], n_buckets: int) -> list[int]:
    """The quantile bucket (0 = shortest) of every length; equal lengths share a bucket."""
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, n_buckets + 1)))
    if len(edges) == 1:
        return [0] * len(lengths)
    # bucket i holds [edges[i], edges[i+1]); the last bucket also holds the maximum
    found = np.searchsorted(edges, lengths, side="right") - 1
    return [int(min(b, len(edges) - 2)) for b in found]


def by_length(lengths: list[int], scores: list[float | None], n_buckets: int) -> list[dict]:
    """Mean score per length bucket, labelled by the shortest and longest length inside."""
    buckets = length_bucket_of(lengths, n_buckets)
    members: dict[int, list[int]] = defaultdict(list)
    for i, bucket in enumerate(buckets):
        members[bucket].append(i)
    rows = []
    for bucket in sorted(members):
        inside = members[bucket]
        values = [scores[i] for i in inside if scores[i] is not None]
        low, high = min(lengths[i] for i in inside), max(lengths[i] for i in inside)
        rows.append(
            {
                "bucket": f"{low}-{high}",
                "min_length": low,
                "max_length": high,
                "n": len(values),
                "mean": float(np.mean(values)) if values else None,
            }
        )
    return rows


def by_group(keys: list[str | None], scores: list[float | None]) -> dict[str, dict]:
    """Mean score per group key (items without a key or a score are left out)."""
    values: dict[str, list[float]] = defaultdict(list)
    for key, score in zip(keys, scores, strict=True):
        if key is not None and score is not None:
            values[str(key)].append(score)
    return {k: {"n": len(v), "mean": float(np.mean(v))} for k, v in sorted(values.items())}


def analyze_errors(
    items: list[dict],
    predictions: list[str],
    scores: Scores,
    worst_n: int = 5,
    length_buckets: int = 4,
    confused: list[tuple[str, str, int]] | None = None,
) -> dict:
    """Worst examples and grouped means for every metric; `items` carry prompt, reference,
    length and the optional category / label / source fields."""
    lengths = [item["length"] for item in items]
    report: dict = {"worst": {}, "by_length": {}, **{f"by_{f}": {} for f in GROUP_FIELDS}}
    for metric, values in scores.items():
        if all(v is None for v in values):
            continue
        worst = worst_indices(values, worst_n, higher_is_better(metric))
        report["worst"][metric] = [_example(items[i], predictions[i], values[i]) for i in worst]
        report["by_length"][metric] = by_length(lengths, values, length_buckets)
        for field in GROUP_FIELDS:
            keys = [item.get(field) for item in items]
            if any(k is not None for k in keys):
                report[f"by_{field}"][metric] = by_group(keys, values)
    report["confused_pairs"] = [
        {"true": t, "predicted": p, "count": c} for t, p, c in (confused or [])
    ]
    return report


def _example(item: dict, prediction: str, score: float) -> dict:
    keys = ("id", "prompt", "reference", *GROUP_FIELDS)
    return {**{k: item.get(k) for k in keys}, "prediction": prediction, "score": score}
