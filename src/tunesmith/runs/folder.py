"""The run folder: the one writer of everything a run leaves behind.

Layout:
    config.yaml       resolved configuration
    metrics.jsonl     one line per logging step
    alerts.jsonl      training alerts
    rejects.jsonl     records left out, each with its reason
    summary.json      data and training statistics at the end
    process.json      who trains it (pid, host, boot, start, data hashes) and how that ended
    checkpoints/      trainer checkpoints (resumable)
    speed.json        the matmul kernel chosen, which a resumed run keeps
    adapter/ | model/ trained adapter, or full model, with tokenizer and chat template
    plots/  reports/
And `index.jsonl` in the parent folder lists runs.

In a distributed run (torchrun) every process holds a RunFolder but only the main one (RANK 0)
writes: the writing methods do nothing elsewhere, so callers need no special cases.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.config.load import save_config
from tunesmith.config.schema import OutputConfig, RunConfig
from tunesmith.utils.errors import ConfigError, TunesmithError

CONFIG = "config.yaml"
LABELS = "labels.json"  # cls and rm runs: the label names in id order
PROCESS = "process.json"


def is_main_process() -> bool:
    """True outside torchrun, and in its global rank 0: the one process that writes run files."""
    return int(os.environ.get("RANK", "0")) == 0


def _main_only(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        return method(*args, **kwargs) if is_main_process() else None

    return wrapper


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def create(cls, output: OutputConfig, default_name: str) -> RunFolder:
        name = output.name or f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        root = Path(output.dir) / name
        if cls(root).has_results() and not output.overwrite:
            raise ConfigError(
                f"output: run folder '{root}' already exists; set output.overwrite=true, "
                "choose another output.name, or resume it with --resume"
            )
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    # paths
    config_path = property(lambda self: self.root / CONFIG)
    metrics_path = property(lambda self: self.root / "metrics.jsonl")
    alerts_path = property(lambda self: self.root / "alerts.jsonl")
    rejects_path = property(lambda self: self.root / "rejects.jsonl")
    checkpoints = property(lambda self: self.root / "checkpoints")
    adapter_dir = property(lambda self: self.root / "adapter")
    model_dir = property(lambda self: self.root / "model")
    plots = property(lambda self: self.root / "plots")
    reports = property(lambda self: self.root / "reports")
    process_path = property(lambda self: self.root / PROCESS)

    @_main_only
    def save_config(self, config: RunConfig) -> None:
        save_config(config, self.config_path)

    @_main_only
    def append_metrics(self, record: dict[str, Any]) -> None:
        _append_jsonl(self.metrics_path, record)

    @_main_only
    def append_alert(self, record: dict[str, Any]) -> None:
        _append_jsonl(self.alerts_path, record)

    def read_alerts(self) -> list[dict[str, Any]]:
        return read_jsonl(self.alerts_path)

    @_main_only
    def drop_metrics_after(self, step: int) -> None:
        """On resume: forget what a killed run logged (metrics and alerts) after the checkpoint it
        resumes from, so both files tell one history; step 0 empties them for a fresh start."""
        for path in (self.metrics_path, self.alerts_path):
            if path.is_file():
                lines = path.read_text(encoding="utf-8").splitlines()
                kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
                atomic_write(path, "".join(f"{line}\n" for line in kept))

    @_main_only
    def reject(self, source: str, line: int, reason: str, record: Any) -> None:
        _append_jsonl(
            self.rejects_path, {"source": source, "line": line, "reason": reason, "record": record}
        )

    def write_json(self, relative: str, data: Any) -> Path:
        return self.write_text(relative, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    @_main_only
    def write_text(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
        return path

    @_main_only
    def clear_rejects(self) -> None:
        """The data is read again on every start or resume."""
        self.rejects_path.unlink(missing_ok=True)

    def has_results(self) -> bool:
        """A run that trained (not one that stopped at a data or config error) is kept."""
        return self.last_checkpoint() is not None or (self.root / "summary.json").exists()

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint. Checkpoints are renamed into place when complete
        (train/checkpoints.py); one without trainer_state.json (written by another tool, or
        before that) was cut short and is skipped."""
        found = sorted(
            (
                p
                for p in self.checkpoints.glob("checkpoint-*")
                if (p / "trainer_state.json").is_file()
            ),
            key=lambda p: int(p.name.split("-")[-1]),
        )
        return found[-1] if found else None

    # process.json: the run's status lives in its folder, so any reader (the workshop's runs
    # table, after a restart too) knows it without a database that could drift

    def read_process(self) -> dict[str, Any] | None:
        if not self.process_path.is_file():
            return None
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
            record = json.loads(self.process_path.read_text(encoding="utf-8"))
            return record if isinstance(record, dict) else None
        return None

    @_main_only
    def start_process(self, pid: int | None = None, **facts: Any) -> None:
        """Record that process `pid` (default: this one) trains the run now: `running`. A reader
        that finds `running` while no such process lives on this host and boot knows the run was
        killed. The first start and the launcher's log are kept across resumes."""
        previous = self.read_process() or {}
        now = time.time()
        record = {
            "status": "running",
            "pid": pid or os.getpid(),
            "host": socket.gethostname(),
            "boot": boot_id(),
            "started": now,
            "first_started": previous.get("first_started", now),
            **{k: previous[k] for k in ("log", "data") if k in previous},
            **facts,
        }
        self.write_json(PROCESS, record)

    @_main_only
    def end_process(self, error: BaseException | None = None, stopped_by: str | None = None):
        """How training ended: finished, stopped (a signal or the monitor's stop, with why) or
        failed with its error sentence (never a traceback)."""
        record = self.read_process() or {}
        status, message = _outcome(error) if error is not None else ("finished", None)
        if error is None and stopped_by:
            status, message = "stopped", f"stopped by the training monitor: {stopped_by}"
        ended = {"status": status, "error": message, "ended": time.time()}
        self.write_json(PROCESS, {**record, **ended})

    @_main_only
    def add_to_index(self, **fields: Any) -> None:
        _append_jsonl(self.root.parent / "index.jsonl", {"run": self.root.name, **fields})


def latest_run(output: OutputConfig, default_name: str) -> Path:
    """The run folder `RunFolder.create` gave this config most recently that has a checkpoint:
    output.name when set, else the newest `<default_name>-<timestamp>` folder in output.dir."""
    parent = Path(output.dir)
    pattern = output.name or f"{default_name}-*"
    runs = [p for p in parent.glob(pattern) if RunFolder(p).last_checkpoint() is not None]
    if not runs:
        raise ConfigError(
            f"--resume: no run with a checkpoint matches '{parent / pattern}'; "
            "give the run folder instead (tunesmith train --resume RUN)"
        )
    return max(runs, key=lambda p: RunFolder(p).last_checkpoint().stat().st_mtime)


def boot_id() -> str | None:
    """This machine's boot (Linux): a pid recorded before a reboot names no process of ours."""
    path = Path("/proc/sys/kernel/random/boot_id")
    return path.read_text().strip() if path.is_file() else None


def _outcome(error: BaseException) -> tuple[str, str]:
    """(status, sentence) of an exception that ended training."""
    if getattr(error, "signum", None) is not None:  # train.callbacks.TrainingInterrupted
        return "stopped", str(error)
    if isinstance(error, KeyboardInterrupt):
        return "stopped", "stopped by Ctrl-C"
    if isinstance(error, TunesmithError):
        return "failed", str(error)
    lines = str(error).strip().splitlines()
    return "failed", f"{type(error).__name__}: {lines[-1] if lines else 'no message'}"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to (for writers that take a path: savefig,
    pandas); renamed onto `path` when the block ends, removed when it fails, so readers never see
    half a file and a failure keeps the previous one. Beside it: the same filesystem, so the
    rename is atomic; a plain name, not mkstemp's, so the file gets the usual permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, text: str) -> None:
    """Write UTF-8 text whole or not at all (see atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; [] when it does not exist."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
