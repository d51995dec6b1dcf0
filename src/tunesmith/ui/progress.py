"""What a run's page shows while it trains, read from its folder: the curves from metrics.jsonl,
progress (step of total, tokens/s, ETA) from the metrics and the log's progress bar, the log's
tail and the plan lines the run printed when it started."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from tunesmith.runs.folder import RunFolder
from tunesmith.workshop import runs

CURVES = ("loss", "learning_rate", "grad_norm")
BAR = re.compile(r"(\d+)/(\d+) \[")  # the Trainer's progress bar: "12/300 [00:04<01:30, ..."


def curves(run_dir: Path) -> dict[str, pd.DataFrame]:
    """One (step, value) frame per curve; a curve with no point yet is an empty frame."""
    metrics = runs.read_metrics(RunFolder(run_dir))
    out = {}
    for name in CURVES:
        points = [(m["step"], m[name]) for m in metrics if m.get(name) is not None]
        out[name] = pd.DataFrame(points, columns=["step", name])
    return out


def log_lines(run_dir: Path, which: str = "last") -> list[str]:
    """The lines of the run's newest (or first) training log; progress-bar redraws (carriage
    returns) count as lines, so the tail shows the latest one."""
    logs = sorted((run_dir / "logs").glob("train-*.log"))
    if not logs:
        return []
    text = (logs[-1] if which == "last" else logs[0]).read_text(errors="replace")
    return [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def log_tail(run_dir: Path, lines: int = 12) -> str:
    return "\n".join(log_lines(run_dir)[-lines:])


def started_plan(run_dir: Path) -> str:
    """The plan lines the run printed when it started (train/recipe.py prints plan_summary)."""
    return "\n".join(line for line in log_lines(run_dir, "first") if line.startswith("plan:"))


def progress(run_dir: Path) -> dict:
    """Step, total steps, tokens per second and the seconds left, as far as they are known."""
    metrics = [m for m in runs.read_metrics(RunFolder(run_dir)) if m.get("loss") is not None]
    bars = [m for line in log_lines(run_dir)[-40:] for m in BAR.findall(line)]
    step = metrics[-1]["step"] if metrics else None
    total = int(bars[-1][1]) if bars else None
    speed = metrics[-1].get("tokens_per_s") if metrics else None
    return {"step": step, "total": total, "tokens_per_s": speed, "eta_s": _eta(metrics, total)}


def _eta(metrics: list[dict], total: int | None) -> float | None:
    """Seconds left at the pace of the last logged steps (their wall-clock times)."""
    timed = [m for m in metrics if m.get("time")][-10:]
    if total is None or len(timed) < 2 or timed[-1]["step"] == timed[0]["step"]:
        return None
    pace = (timed[-1]["time"] - timed[0]["time"]) / (timed[-1]["step"] - timed[0]["step"])
    return max(0.0, pace * (total - timed[-1]["step"]))
