"""Paired bootstrap: is system B better than system A on the same items, and by how much?

Items are resampled with replacement, keeping each item's pair (a_i, b_i) together, so the
interval reflects item-to-item variation rather than treating the two systems as independent.
"""

from __future__ import annotations

import numpy as np

from tunesmith.utils.errors import ConfigError, DataError

_CHUNK = 1_000_000  # resampled indices held in memory at once


def paired_bootstrap(
    a: list[float],
    b: list[float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Mean of a and b, diff = mean(b) - mean(a), its percentile interval and two-sided p.

    p_value: the share of resampled differences on the other side of zero from the observed
    difference (zero included), doubled and capped at 1.
    """
    if len(a) != len(b):
        raise DataError(
            f"paired bootstrap needs one score per item from each side: {len(a)} vs {len(b)}"
        )
    if not a:
        raise DataError("paired bootstrap needs at least one item")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be at least 1, got {n_resamples}")
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    deltas = xb - xa
    n = len(deltas)
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // n)
    boot = np.concatenate(
        [
            deltas[rng.integers(0, n, size=(min(rows, n_resamples - start), n))].mean(axis=1)
            for start in range(0, n_resamples, rows)
        ]
    )
    diff = float(deltas.mean())
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    other_side = np.mean(boot <= 0) if diff > 0 else np.mean(boot >= 0)
    return {
        "n": n,
        "mean_a": float(xa.mean()),
        "mean_b": float(xb.mean()),
        "diff": diff,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float(min(1.0, 2 * other_side)),
        "confidence": confidence,
        "n_resamples": n_resamples,
    }
