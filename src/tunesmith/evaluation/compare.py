"""Compare two models on the same items: paired bootstrap CI, win/tie/loss, outputs side by side.

Scores are per item and aligned: `a[metric][i]` and `b[metric][i]` score the same item i; None
marks an item a metric does not apply to, and such pairs are left out. The difference is always
b - a (b: the evaluated model, a: the baseline); "win" means b scored better than a, whichever
direction the metric counts as better.
"""

from __future__ import annotations

from tunesmith.evaluation.stats import paired_bootstrap

# Per-item metrics where smaller is better; every other metric: larger is better.
LOWER_IS_BETTER = frozenset({"nll", "perplexity", "latency_s"})

Scores = dict[str, list[float | None]]


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def compare_scores(
    a: Scores,
    b: Scores,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    tie_tolerance: float = 1e-9,
) -> dict[str, dict]:
    """Per metric present in both: bootstrap statistics of b - a and win/tie/loss counts of b."""
    result = {}
    for metric in [m for m in b if m in a]:
        pairs = [(x, y) for x, y in zip(a[metric], b[metric], strict=True) if None not in (x, y)]
        if not pairs:
            continue
        xs, ys = [float(x) for x, _ in pairs], [float(y) for _, y in pairs]
        stats = paired_bootstrap(xs, ys, n_resamples=n_resamples, confidence=confidence, seed=seed)
        sign = 1 if higher_is_better(metric) else -1
        gains = [sign * (y - x) for x, y in pairs]
        result[metric] = {
            **stats,
            "higher_is_better": higher_is_better(metric),
            "wins": sum(g > tie_tolerance for g in gains),
            "ties": sum(abs(g) <= tie_tolerance for g in gains),
            "losses": sum(g < -tie_tolerance for g in gains),
            "significant": not (stats["ci_low"] <= 0 <= stats["ci_high"]),
        }
    return result


def side_by_side(
    prompts: list[str],
    references: list[str | None],
    outputs_a: list[str],
    outputs_b: list[str],
    score_a: list[float | None] | None = None,
    score_b: list[float | None] | None = None,
) -> list[dict]:
    """One row per item: prompt, reference, both outputs and (optionally) one metric's scores."""
    n = len(prompts)
    score_a, score_b = score_a or [None] * n, score_b or [None] * n
    rows = zip(prompts, references, outputs_a, outputs_b, score_a, score_b, strict=True)
    return [
        {"id": i, "prompt": p, "reference": r, "a": oa, "b": ob, "score_a": sa, "score_b": sb}
        for i, (p, r, oa, ob, sa, sb) in enumerate(rows)
    ]


def headline(comparison: dict[str, dict], preferred: tuple[str, ...]) -> str | None:
    """The first of `preferred` that was compared (the metric a summary line shows)."""
    return next((m for m in preferred if m in comparison), next(iter(comparison), None))
