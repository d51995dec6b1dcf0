"""Plots of a run's metrics, written into its plots/ folder.

Figures are drawn with matplotlib's object API (no pyplot state, no display needed) and written
atomically, so a viewer refreshing a plot during training never sees half a file.
"""

from __future__ import annotations

import math
from pathlib import Path

from tunesmith.runs.folder import RunFolder, atomic_path, is_main_process, read_jsonl

# metrics.jsonl key, axis label, log scale; the panels of training.png
PANELS = (
    ("loss", "loss", False),
    ("learning_rate", "learning rate", False),
    ("grad_norm", "grad norm (before clipping)", True),
    ("tokens_per_s", "tokens / s", False),
)


def read_metrics(run: RunFolder) -> list[dict]:
    return read_jsonl(run.metrics_path)


def plot_metrics(run: RunFolder) -> list[Path]:
    """loss.png and training.png (loss, lr, grad norm, throughput); [] when nothing was logged
    (or in a distributed run's other processes: the main one draws)."""
    if not is_main_process():
        return []
    metrics = read_metrics(run)
    drawn = (plot_loss(run, metrics), plot_training(run, metrics), plot_rewards(run, metrics))
    return [p for p in drawn if p]


def plot_loss(run: RunFolder, metrics: list[dict] | None = None) -> Path | None:
    """Training (and eval) loss against step; None when nothing was logged."""
    metrics = read_metrics(run) if metrics is None else metrics
    train, evals = _series(metrics, "loss"), _series(metrics, "eval_loss")
    if not train:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    _draw(ax, train, "train")
    _draw(ax, evals, "eval")
    ax.set(xlabel="step", ylabel="loss", title=f"{run.root.name}: loss")
    ax.legend()
    return _save(fig, run.plots / "loss.png")


def plot_training(run: RunFolder, metrics: list[dict] | None = None) -> Path | None:
    """One figure with four panels: loss (and eval loss), learning rate, grad norm, tokens/s."""
    metrics = read_metrics(run) if metrics is None else metrics
    if not _series(metrics, "loss"):
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5))
    for ax, (key, label, log) in zip(fig.subplots(2, 2).flat, PANELS, strict=True):
        _draw(ax, _series(metrics, key), "train" if key == "loss" else None)
        if key == "loss" and _draw(ax, _series(metrics, "eval_loss"), "eval"):
            ax.legend()
        if log and all(v > 0 for _, v in _series(metrics, key) if math.isfinite(v)):
            ax.set_yscale("log")
        ax.set(xlabel="step", title=label)
    fig.suptitle(run.root.name)
    return _save(fig, run.plots / "training.png")


# the online RL stages (grpo, ppo): rewards.png
RL_PANELS = (("reward", "reward"), ("kl", "KL to the reference"), ("entropy", "entropy"))


def plot_rewards(run: RunFolder, metrics: list[dict] | None = None) -> Path | None:
    """reward, KL and entropy against step (grpo, ppo); None when no reward was logged."""
    metrics = read_metrics(run) if metrics is None else metrics
    if not _series(metrics, "reward"):
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.5))
    for ax, (key, label) in zip(fig.subplots(1, 3).flat, RL_PANELS, strict=True):
        _draw(ax, _series(metrics, key), None)
        ax.set(xlabel="step", title=label)
    fig.suptitle(run.root.name)
    return _save(fig, run.plots / "rewards.png")


def _series(metrics: list[dict], key: str) -> list[tuple[int, float]]:
    return [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), int | float)]


def _draw(ax, points: list[tuple[int, float]], label: str | None) -> bool:
    if not points:
        return False
    steps, values = zip(*points, strict=True)
    ax.plot(steps, values, label=label, marker="." if len(steps) < 50 else None)
    ax.grid(alpha=0.3)
    return True


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path
