"""The runs table, read from the run folders themselves (the single source of truth).

Nothing is cached between calls, so a restarted UI or agent server loses no run and shows no
stale one: status comes from process.json (written by training, runs/folder.py) checked against
the living processes of this machine, the rest from config.yaml, summary.json and metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from tunesmith.runs.folder import RunFolder, boot_id, read_jsonl
from tunesmith.utils.errors import TunesmithError
from tunesmith.workshop.workspace import Workspace

STATUSES = ("running", "finished", "failed", "stopped", "interrupted")
SORT_KEYS = ("started", "name", "stage", "method", "model", "status", "steps", "best", "wall")
RUN_FILES = ("config.yaml", "process.json", "summary.json", "eval.json")


def list_runs(
    ws: Workspace,
    stage: str | None = None,
    status: str | None = None,
    sort: str = "started",
    descending: bool = True,
) -> list[dict[str, Any]]:
    """One row per run folder under the workspace's runs folder, filtered and sorted."""
    if status is not None and status not in STATUSES:
        raise TunesmithError(f"status: '{status}' is not one of {', '.join(STATUSES)}")
    if sort not in SORT_KEYS:
        raise TunesmithError(f"sort: '{sort}' is not one of {', '.join(SORT_KEYS)}")
    folders = sorted(ws.runs_dir.iterdir()) if ws.runs_dir.is_dir() else []
    rows = [run_row(ws, p) for p in folders if is_run_folder(p)]
    rows = [r for r in rows if (stage is None or r["stage"] == stage)]
    rows = [r for r in rows if (status is None or r["status"] == status)]
    key = (lambda r: (r["best"] or {}).get("value")) if sort == "best" else (lambda r: r[sort])
    # rows without the sort key go last whichever the direction
    present = [r for r in rows if key(r) is not None]
    present.sort(key=key, reverse=descending)
    return present + [r for r in rows if key(r) is None]


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in RUN_FILES)


def run_row(ws: Workspace, path: Path) -> dict[str, Any]:
    """The table's columns for one run folder."""
    run = RunFolder(path)
    config, summary = read_config(run), read_json(path / "summary.json") or {}
    process = run.read_process() or {}
    metrics = read_metrics(run)
    status, error = run_status(run, process, summary)
    started = process.get("first_started") or _mtime(run.config_path)
    return {
        "name": path.name,
        "path": ws.relative(path),
        "stage": _get(config, "train", "stage") or _eval_only(path),
        "method": _get(config, "method", "type"),
        "model": summary.get("model") or _get(config, "model", "name_or_path"),
        "data_hash": combined_hash(process.get("data")),
        "status": status,
        "error": error,
        "steps": summary.get("steps") or max((m["step"] for m in metrics), default=None),
        "best": best_metric(summary, metrics),
        "started": _iso(started),
        "wall_seconds": wall_seconds(status, process, summary),
        "checkpoint": _name(run.last_checkpoint()),
    }


def run_status(run: RunFolder, process: dict, summary: dict) -> tuple[str, str | None]:
    """(status, error sentence). A `running` record whose process is gone was killed (SIGKILL,
    a crash of the machine): interrupted, or failed when its launch log ends with an error."""
    if process:
        if process.get("status") != "running":
            return process.get("status", "failed"), process.get("error")
        if process_alive(process):
            return "running", None
        error = log_error(run.root / process["log"]) if process.get("log") else None
        return ("failed", error) if error else ("interrupted", None)
    # runs written before process.json existed
    if summary:
        stopped = summary.get("stopped_by")
        return ("stopped", stopped) if stopped else ("finished", None)
    if (run.root / "eval.json").is_file():
        return "finished", None
    return "interrupted", None


def process_alive(process: dict) -> bool:
    """Whether the recorded training process still runs. On another host it cannot be checked
    and counts as running; a pid of an earlier boot names no process of ours."""
    if process.get("host") != socket.gethostname():
        return True
    if process.get("boot") and process.get("boot") != boot_id():
        return False
    pid = int(process.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A child that exited but was not waited for still answers kill(pid, 0)."""
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def log_error(log: Path) -> str | None:
    """The error sentence a CLI process ended with in its log: the `error: ...` line it printed,
    or a traceback's last line (the exception), never the traceback."""
    if not log.is_file():
        return None
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines[-50:]):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return None


def best_metric(summary: dict, metrics: list[dict]) -> dict | None:
    """Early stopping's best metric; else the lowest eval loss; else the last training loss."""
    best = summary.get("best")
    if best and best.get("value") is not None:
        return {"name": best["metric"], "value": best["value"], "step": best.get("step")}
    evals = [m for m in metrics if m.get("eval_loss") is not None]
    if evals:
        low = min(evals, key=lambda m: m["eval_loss"])
        return {"name": "eval_loss", "value": low["eval_loss"], "step": low["step"]}
    losses = [m for m in metrics if m.get("loss") is not None]
    if losses:
        return {"name": "loss (last)", "value": losses[-1]["loss"], "step": losses[-1]["step"]}
    return None


def wall_seconds(status: str, process: dict, summary: dict) -> float | None:
    if summary.get("seconds") is not None and status == "finished":
        return summary["seconds"]
    if not process.get("started"):
        return summary.get("seconds")
    end = time.time() if status == "running" else process.get("ended")
    return round(end - process["started"], 1) if end else None


def combined_hash(hashes: dict | None) -> str | None:
    """One short hash for the training files (each file's content hash, in name order)."""
    if not hashes:
        return None
    values = [hashes[name] for name in sorted(hashes)]
    text = values[0] if len(values) == 1 else hashlib.sha256("\n".join(values).encode()).hexdigest()
    return text.removeprefix("bytes:")[:12]


def show_run(ws: Workspace, name: str) -> dict[str, Any]:
    """One run in full: its row, config, summary, last metrics, alerts, checkpoints, artifacts."""
    path = ws.run_dir(name)
    if not is_run_folder(path):
        raise TunesmithError(f"'{name}' is not a run folder (no {' / '.join(RUN_FILES)})")
    run = RunFolder(path)
    metrics = read_metrics(run)
    return {
        **run_row(ws, path),
        "config": read_config(run),
        "summary": read_json(path / "summary.json"),
        "process": run.read_process(),
        "last_metrics": metrics[-1] if metrics else None,
        "alerts": _safe_jsonl(run.alerts_path)[-20:],
        "checkpoints": sorted(p.name for p in run.checkpoints.glob("checkpoint-*")),
        # weights/: a vision run's detector (best.pt, last.pt)
        "artifacts": [d for d in ("adapter", "model", "export", "weights") if (path / d).is_dir()],
        "eval": eval_means(path),
    }


def compare_runs(ws: Workspace, names: list[str]) -> dict[str, Any]:
    """Config keys that differ between the runs, and their final metrics side by side."""
    if len(names) < 2:
        raise TunesmithError("compare: give at least two runs")
    shown = [show_run(ws, name) for name in names]
    flat = [flatten(s["config"] or {}) for s in shown]
    keys = sorted(set().union(*flat))
    differs = {k: [f.get(k) for f in flat] for k in keys if len({_key(f.get(k)) for f in flat}) > 1}
    return {
        "runs": [s["name"] for s in shown],
        "config": differs,
        "metrics": final_metrics(shown),
    }


def final_metrics(shown: list[dict]) -> dict[str, list]:
    rows: dict[str, list] = {"status": [s["status"] for s in shown]}
    for field in ("train_loss", "steps", "seconds"):
        rows[field] = [(s["summary"] or {}).get(field) for s in shown]
    rows["best"] = [(s["best"] or {}).get("value") for s in shown]
    rows["best_metric"] = [(s["best"] or {}).get("name") for s in shown]
    rows["final_loss"] = [(s["last_metrics"] or {}).get("loss") for s in shown]
    for metric in sorted(set().union(*((s["eval"] or {}) for s in shown))):
        rows[f"eval.{metric}"] = [(s["eval"] or {}).get(metric) for s in shown]
    return rows


def eval_means(path: Path) -> dict[str, float] | None:
    """The evaluated model's mean per metric from eval.json, when the run was evaluated."""
    report = read_json(path / "eval.json")
    if not report:
        return None
    scores = ((report.get("results") or {}).get("model") or {}).get("scores") or {}
    means = {}
    for metric, values in scores.items():
        present = [v for v in values if isinstance(v, int | float)]
        if present:
            means[metric] = sum(present) / len(present)
    return means


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def read_config(run: RunFolder) -> dict | None:
    """config.yaml as saved (plain data: the table must list runs of older config versions)."""
    if not run.config_path.is_file():
        return None
    with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError):
        data = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    return None


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    return None


def read_metrics(run: RunFolder) -> list[dict]:
    return [m for m in _safe_jsonl(run.metrics_path) if isinstance(m.get("step"), int)]


def _safe_jsonl(path: Path) -> list[dict]:
    """A live run may be writing its last line: a line that does not parse is skipped."""
    with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
        return read_jsonl(path)
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def _eval_only(path: Path) -> str | None:
    """A folder `tunesmith eval` made for a model that was not a run."""
    return "eval" if (path / "eval.json").is_file() else None


def _get(config: dict | None, section: str, key: str):
    return ((config or {}).get(section) or {}).get(key)


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _name(path: Path | None) -> str | None:
    return path.name if path else None
