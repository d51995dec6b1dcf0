"""Plots of a run's metrics, written into its plots/ folder."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.runs.folder import RunFolder


def read_metrics(run: RunFolder) -> list[dict]:
    if not run.metrics_path.is_file():
        return []
    lines = run.metrics_path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def plot_loss(run: RunFolder) -> Path | None:
    """Training (and eval) loss against step; None when nothing was logged."""
    metrics = read_metrics(run)
    train = [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, points in (("train", train), ("eval", evals)):
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, label=label, marker="." if len(steps) < 50 else None)
    ax.set(xlabel="step", ylabel="loss", title=f"{run.root.name}: loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    run.plots.mkdir(parents=True, exist_ok=True)
    path = run.plots / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
