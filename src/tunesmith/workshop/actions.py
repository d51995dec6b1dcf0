"""The actions the three doors (CLI, UI, MCP) call: plan, inspect, clean, train, status, stop,
resume, evaluate, compare, export, serve, and assistant projects' builds and dossiers.

Each takes a Workspace first, returns a plain JSON-able dict and raises TunesmithError with a
sentence on bad input. Every path is resolved inside the workspace. Long actions (train,
resume, evaluate, export, serve) start a `tunesmith` process of their own and return at once:
the process writes into its run folder, which is where status is read from, so a restarted
door finds every run as it left it. The library does the work; nothing here re-implements it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.config.schema import RunConfig
from tunesmith.runs.folder import RunFolder, atomic_write, boot_id
from tunesmith.utils.errors import TunesmithError
from tunesmith.workshop import runs
from tunesmith.workshop.workspace import Workspace

# config keys that name files or folders: checked against the workspace
PATH_KEYS = (
    "data.train",
    "data.eval",
    "data.registry",
    "data.replay.files",
    "train.forgetting_eval.data",
    "eval.data",
    "eval.adapter",
    "export.dir",
    "serve.adapters_dir",
    "output.dir",
)
# keys that hold a model reference: a path only when it looks like one (else an alias, a hub
# id, a URL or a word such as `base`)
REF_KEYS = ("model.name_or_path", "eval.model", "eval.baseline", "train.distill.teacher")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SERVE_RECORD = ".tunesmith/serve.json"
QUEUE = ".tunesmith/queue.json"  # training runs waiting for their turn
ENTRY = "::"  # REGISTRY::NAME names one dataset entry of a registry (dataset_info.json)

# processes this door started: polled so that a finished one is reaped, not left a zombie
_children: dict[int, subprocess.Popen] = {}


# --- runs -----------------------------------------------------------------------------------


def list_runs(
    ws: Workspace, stage: str | None = None, status: str | None = None, sort: str = "started"
) -> dict[str, Any]:
    _reap()
    rows = runs.list_runs(ws, stage, status, sort, descending=sort in ("started", "steps", "wall"))
    return {"runs_dir": ws.relative(ws.runs_dir), "runs": rows}


def show_run(ws: Workspace, run: str) -> dict[str, Any]:
    _reap()
    return runs.show_run(ws, run)


def compare(ws: Workspace, run_names: Sequence[str]) -> dict[str, Any]:
    _reap()
    return runs.compare_runs(ws, list(run_names))


def status(ws: Workspace, run: str) -> dict[str, Any]:
    """A run's row with its last metrics, recent alerts, log and background jobs."""
    shown = show_run(ws, run)
    keep = ("process", "config", "summary", "checkpoints", "artifacts")
    out = {k: v for k, v in shown.items() if k not in keep}
    root = ws.run_dir(run)
    out["log"] = (shown["process"] or {}).get("log")
    out["jobs"] = {kind: job_status(root, kind) for kind in ("eval", "export") if _job(root, kind)}
    return out


# --- configs and data -----------------------------------------------------------------------


def checked_config(
    ws: Workspace, config: str | None, overrides: Sequence[str], saved: bool = False
) -> RunConfig:
    """The config file (in the workspace) with its overrides, every path in it inside the
    workspace and made absolute, so that it means the same in this process and in the
    `tunesmith` processes started with the workspace as their folder. A run's saved config
    (`saved`) was checked when it trained: only the overrides' paths are checked then."""
    from tunesmith.config.load import load_config

    path = ws.resolve(config, "config") if config else None
    if path is not None and not path.is_file():
        raise TunesmithError(f"config '{config}' not found in the workspace")
    loaded = load_config(path, list(overrides), saved=saved)
    data = loaded.model_dump(mode="json")
    given = {item.split("=", 1)[0].strip() for item in overrides}
    for key in PATH_KEYS + REF_KEYS:
        if saved and key not in given:
            continue
        inside = _inside if key in PATH_KEYS else _ref_inside
        _update(data, key, lambda value, key=key, inside=inside: inside(ws, value, key))
    return RunConfig.model_validate(data)


def plan(
    ws: Workspace,
    config: str | None = None,
    overrides: Sequence[str] = (),
    goal: str = "quality",
    probe: bool = False,
    hardware: str | None = None,
) -> dict[str, Any]:
    """The planner's memory, time and advice (probe: three measured steps; default the FLOPs
    estimate, which returns in about a second)."""
    from tunesmith.plan.hardware import parse_hardware
    from tunesmith.plan.planner import make_plan

    if goal not in ("quality", "speed", "memory"):
        raise TunesmithError(f"goal: '{goal}' is not one of quality, speed, memory")
    cfg = checked_config(ws, config, overrides)
    target = parse_hardware(hardware) if hardware else None
    return _jsonable(make_plan(cfg, goal=goal, probe=probe, hardware=target).as_dict())


def inspect(
    ws: Workspace,
    files: Sequence[str],
    out: str | None = None,
    tokenizer: str | None = None,
    cutoff_len: int | None = None,
    fmt: str = "auto",
    rules: dict | None = None,
) -> dict[str, Any]:
    """The data quality report (inspect.html + inspect.json) of data files; its headline."""
    from tunesmith.data.quality.analyze import inspect_data, write_inspect_report
    from tunesmith.data.quality.rules import QualityRules

    paths, fmt, columns = data_source(ws, files, fmt)
    rule_set = _validated(QualityRules, rules or {}, "inspect rules")
    tok = _tokenizer(ws, tokenizer) if tokenizer else None
    report = inspect_data(paths, fmt, columns, tok, cutoff_len, rule_set)
    if report["records"]["read"] == 0:
        raise TunesmithError(f"{', '.join(files)}: no records found (an empty file?)")
    folder = ws.resolve(out, "out") if out else Path(paths[0]).parent / "inspect"
    html, js = write_inspect_report(report, folder)
    return {
        "records": report["records"],
        "quality_score": report.get("quality_score"),
        "recommendations": report.get("recommendations", []),
        "html": ws.relative(html),
        "json": ws.relative(js),
    }


def clean(
    ws: Workspace, files: Sequence[str], out: str, settings: dict | None = None, fmt: str = "auto"
) -> dict[str, Any]:
    """The cleaning pipeline: cleaned file, rejects.jsonl with each reason, stats and version."""
    from tunesmith.data.quality.clean import CleanConfig
    from tunesmith.data.quality.clean_stream import clean_files

    paths, fmt, columns = data_source(ws, files, fmt)
    target = ws.resolve(out, "out")
    cfg = _validated(CleanConfig, settings or {}, "clean")
    # streamed, as the CLI cleans: the records are never all in memory
    summary = clean_files(paths, cfg, target, fmt=fmt, columns=columns)
    return {
        "read": summary["read"],
        "kept": summary["kept"],
        "rejected": summary["rejected"],
        "steps": summary["steps"],
        **{
            k: ws.relative(Path(summary[k]))
            for k in ("output", "rejects_path", "stats_path", "version_path")
            if summary.get(k)
        },
    }


def convert(ws: Workspace, file: str, out: str, to: str, fmt: str = "auto") -> dict[str, Any]:
    """A data file rewritten in another format (alpaca, sharegpt, openai) inside the workspace."""
    from tunesmith.data.convert import convert_file

    paths, fmt, columns = data_source(ws, [file], fmt)
    if len(paths) > 1:
        raise TunesmithError(f"'{file}' has {len(paths)} files; convert converts one at a time")
    target = ws.resolve(out, "out")
    try:
        stats = convert_file(paths[0], target, to, fmt, columns)
    except ValueError as exc:  # an unknown format: convert_file says which are allowed
        raise TunesmithError(str(exc)) from None
    return {**stats, "output": ws.relative(target)}


def review_decide(
    ws: Workspace,
    review_file: str,
    index: int,
    decision: str,
    reason: str = "",
    edited: dict | None = None,
) -> dict[str, Any]:
    """Fill in one line of a review file (data/review.py): accept, edit (with the whole new
    record) or reject (with a reason); "" makes it undecided again. Returns the counts."""
    from tunesmith.data.review import check_entry, read_review_file

    path = ws.resolve(review_file, "review file")
    entries = [entry for _, entry in read_review_file(path)]
    if not 0 <= index < len(entries):
        raise TunesmithError(f"review line {index + 1} does not exist ({len(entries)} lines)")
    entry = {**entries[index], "decision": decision, "reason": reason.strip()}
    entry["edited"] = edited if decision == "edit" else None
    entries[index] = check_entry(entry, f"{path.name}:{index + 1}")
    atomic_write(path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    return review_counts(entries)


def review_counts(entries: Sequence[dict]) -> dict[str, int]:
    decided = [e.get("decision") or "undecided" for e in entries]
    return {k: decided.count(k) for k in ("accept", "edit", "reject", "undecided")}


# --- long actions: their own process ----------------------------------------------------------


def train(
    ws: Workspace, config: str | None = None, overrides: Sequence[str] = (), name: str | None = None
) -> dict[str, Any]:
    """Start `tunesmith train` into a new run folder of the workspace; returns at once."""
    cfg = checked_config(ws, config, overrides)
    if not cfg.data.train and not cfg.data.dataset:
        raise TunesmithError("data.train: no training files given (e.g. data.train=[data.jsonl])")
    name = name or cfg.output.name or f"{cfg.train.stage}-{cfg.method.type}-{_stamp()}"
    if not NAME.match(name):
        raise TunesmithError(f"name: '{name}' must be letters, digits, '.', '_' or '-'")
    root = ws.runs_dir / name
    if RunFolder(root).has_results() and not cfg.output.overwrite:
        raise TunesmithError(f"run '{name}' already exists; choose another name or resume it")
    config_arg = [str(ws.resolve(config, "config"))] if config else []
    out = [f"output.dir={ws.runs_dir}", f"output.name={name}"]
    return _start_training(ws, root, ["train", *config_arg, *overrides, *out])


def resume(ws: Workspace, run: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Continue a stopped or interrupted run from its last checkpoint; returns at once."""
    root = ws.run_dir(run)
    folder = RunFolder(root)
    row = runs.run_row(ws, root)
    if row["status"] == "running":
        raise TunesmithError(f"run '{root.name}' is running; stop it before resuming")
    if row["stage"] == "detect":  # a vision run: Ultralytics' own resume from weights/last.pt
        if not (root / "weights" / "last.pt").is_file():
            raise TunesmithError(f"run '{root.name}' has no weights/last.pt to resume from")
        return _start_training(ws, root, ["vision", "train", "--resume", str(root), *overrides])
    if folder.last_checkpoint() is None:
        raise TunesmithError(f"run '{root.name}' has no checkpoint to resume from")
    checked_config(ws, str(folder.config_path), overrides, saved=True)
    return _start_training(ws, root, ["train", "--resume", str(root), *overrides])


def stop(ws: Workspace, run: str) -> dict[str, Any]:
    """SIGTERM to the training process: it finishes its step, saves a resumable checkpoint and
    exits (train/callbacks.py StopOnSignal)."""
    _reap()
    root = ws.run_dir(run)
    row = runs.run_row(ws, root)
    process = RunFolder(root).read_process() or {}
    if row["status"] != "running":
        raise TunesmithError(f"run '{root.name}' is not running (status {row['status']})")
    if process.get("host") != socket.gethostname():
        raise TunesmithError(f"run '{root.name}' trains on {process.get('host')}; stop it there")
    os.kill(int(process["pid"]), signal.SIGTERM)
    return {
        "run": root.name,
        "status": "stopping",
        "message": "SIGTERM sent: training stops after its current step and saves a checkpoint "
        f"(resume with: tunesmith train --resume {ws.relative(root)})",
    }


def enqueue(
    ws: Workspace, config: str | None = None, overrides: Sequence[str] = (), name: str | None = None
) -> dict[str, Any]:
    """Queue a training run (checked now, not when its turn comes); it starts at once when no
    run of the workspace trains, else when start_queued finds none training."""
    checked_config(ws, config, overrides)
    if name is not None and not NAME.match(name):
        raise TunesmithError(f"name: '{name}' must be letters, digits, '.', '_' or '-'")
    entry = {"config": config, "overrides": list(overrides), "name": name, "queued": time.time()}
    with _queue_lock(ws):
        _write_queue(ws, [*_read_queue(ws), entry])
    return {"started": start_queued(ws), "queue": _read_queue(ws)}


def queued(ws: Workspace) -> dict[str, Any]:
    """The queue (a file in the workspace, so a restarted door finds it) and what trains."""
    running = [r["name"] for r in runs.list_runs(ws, status="running")]
    return {"queue": _read_queue(ws), "running": running}


def start_queued(ws: Workspace) -> dict[str, Any] | None:
    """Start the first queued run when no run trains (one at a time); a door calls this now and
    then. A queued run that can no longer start is dropped with its sentence as the result."""
    _reap()
    with _queue_lock(ws):
        queue = _read_queue(ws)
        if not queue or runs.list_runs(ws, status="running"):
            return None
        entry, rest = queue[0], queue[1:]
        _write_queue(ws, rest)
        try:
            return train(ws, entry["config"], entry["overrides"], entry["name"])
        except TunesmithError as exc:
            return {"run": entry["name"], "status": "failed", "error": str(exc)}


def unqueue(ws: Workspace, position: int) -> dict[str, Any]:
    with _queue_lock(ws):
        queue = _read_queue(ws)
        if not 0 <= position < len(queue):
            raise TunesmithError(f"queue position {position + 1} does not exist")
        del queue[position]
        _write_queue(ws, queue)
    return {"queue": queue}


def evaluate(
    ws: Workspace, run: str, overrides: Sequence[str] = (), config: str | None = None
) -> dict[str, Any]:
    """Start `tunesmith eval` of a run (tuned vs base, as its eval section and the overrides
    say); eval.json and reports/eval.html land in the run folder. Returns at once."""
    root = ws.run_dir(run)
    config_arg = [str(ws.resolve(config, "config"))] if config else []
    if config:
        checked_config(ws, config, overrides)
    else:
        checked_config(ws, str(RunFolder(root).config_path), overrides, saved=True)
    return _start_job(ws, root, "eval", ["eval", *config_arg, str(root), *overrides])


def export(ws: Workspace, run: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Start `tunesmith export` of a run (merge, verify, model card; default RUN/export)."""
    root = ws.run_dir(run)
    checked_config(ws, str(RunFolder(root).config_path), overrides, saved=True)
    if not any((root / d).is_dir() for d in ("adapter", "model")):
        raise TunesmithError(f"run '{root.name}' has no trained adapter or model to export yet")
    return _start_job(ws, root, "export", ["export", str(root), *overrides])


def serve_start(
    ws: Workspace, model: str, port: int = 8000, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Start `tunesmith serve`: the base model and every run of the workspace by its name."""
    record = _serve_record(ws)
    if record and runs.process_alive(record):
        raise TunesmithError(f"a server already runs (pid {record['pid']}, port {record['port']})")
    settings = [f"model.name_or_path={model}", f"serve.adapters_dir={ws.runs_dir}"]
    settings += [f"serve.port={port}", *overrides]
    checked_config(ws, None, settings)
    log = ws.root / ".tunesmith" / "serve.log"
    child = _launch(ws, ["serve", *settings], log)
    record = {**_process_facts(child.pid), "port": port, "log": ws.relative(log)}
    atomic_write(ws.root / SERVE_RECORD, json.dumps(record) + "\n")
    return {"status": "starting", "url": f"http://127.0.0.1:{port}/v1", "pid": child.pid}


def serve_stop(ws: Workspace) -> dict[str, Any]:
    record = _serve_record(ws)
    if not record or not runs.process_alive(record):
        raise TunesmithError("no server of this workspace is running")
    os.kill(int(record["pid"]), signal.SIGTERM)  # the server drains its requests, then exits
    return {"status": "stopping", "pid": record["pid"]}


# --- assistant projects (tunesmith assistant init / build) -----------------------------------

ASSISTANT_SPEC = "assistant.yaml"


def assistant_projects(ws: Workspace) -> list[str]:
    """Workspace folders holding an assistant.yaml, the most recently changed first (run folders
    and hidden folders are not searched; at most three levels deep)."""
    found = []
    # a pattern per depth: "**" would walk every run's checkpoints and any virtualenv
    for spec in (s for depth in range(4) for s in ws.root.glob("*/" * depth + ASSISTANT_SPEC)):
        parts = spec.relative_to(ws.root).parts
        if any(p.startswith(".") or p == ws.runs_dir.name for p in parts[:-1]):
            continue
        found.append((spec.stat().st_mtime, ws.relative(spec.parent) or "."))
    return [name for _, name in sorted(found, reverse=True)]


def assistant_status(ws: Workspace, project: str) -> dict[str, Any]:
    """Where a project's build stands: its dossier's status, each stage's record, the gates, the
    dossier page, and a build started from a door (running / finished / failed)."""
    root = _assistant_root(ws, project)
    dossier = runs.read_json(root / "dossier.json")
    page = root / "dossier.html"
    return {
        "project": ws.relative(root) or ".",
        "status": dossier["status"] if dossier else "not built",
        "stages": (dossier or {}).get("stages", {}),
        "gates": (dossier or {}).get("gates"),
        "limits": (dossier or {}).get("limits", []),
        "dossier": ws.relative(page) if page.is_file() else None,
        "job": job_status(root, "assistant"),
    }


def assistant_build(ws: Workspace, project: str, from_stage: str | None = None) -> dict[str, Any]:
    """Start `tunesmith assistant build` of a project (each stage skipped when its inputs are
    unchanged; `from_stage` redoes from that stage). Returns at once; the dossier follows."""
    from tunesmith.workflows.assistant.stages import STAGE_NAMES

    root = _assistant_root(ws, project)
    if from_stage and from_stage not in STAGE_NAMES:
        raise TunesmithError(f"from_stage: got '{from_stage}'; one of {', '.join(STAGE_NAMES)}")
    argv = ["assistant", "build", str(root / ASSISTANT_SPEC)]
    return _start_job(ws, root, "assistant", argv + (["--from", from_stage] if from_stage else []))


def _assistant_root(ws: Workspace, project: str) -> Path:
    root = ws.resolve(project, "project")
    if not (root / ASSISTANT_SPEC).is_file():
        raise TunesmithError(
            f"project '{project}' has no {ASSISTANT_SPEC}: create one with "
            f"`tunesmith assistant init {project}`"
        )
    return root


def job_status(root: Path, kind: str) -> dict[str, Any] | None:
    """A background eval or export of a run: running, finished, or failed with its sentence."""
    job = _job(root, kind)
    if job is None:
        return None
    if runs.process_alive(job):
        return {"status": "running", "log": job["log"]}
    error = runs.log_error(root / job["log"])
    state = "failed" if error else "finished"
    return {"status": state, "error": error, "log": job["log"]}


# --- helpers --------------------------------------------------------------------------------


def _start_training(ws: Workspace, root: Path, argv: list[str]) -> dict[str, Any]:
    log = f"logs/train-{_stamp()}.log"
    root.mkdir(parents=True, exist_ok=True)
    child = _launch(ws, argv, root / log)
    # recorded at once, so the run is `running` from now on; training rewrites the record with
    # the same pid when it starts and keeps the log; a process that dies before that is failed
    # with its log's error sentence
    RunFolder(root).start_process(pid=child.pid, log=log)
    return {"run": root.name, "path": ws.relative(root), "status": "running", "log": log}


def _start_job(ws: Workspace, root: Path, kind: str, argv: list[str]) -> dict[str, Any]:
    current = job_status(root, kind)
    if current and current["status"] == "running":
        raise TunesmithError(f"run '{root.name}': an {kind} is already running")
    log = f"logs/{kind}-{_stamp()}.log"
    child = _launch(ws, argv, root / log)
    RunFolder(root).write_json(f"jobs/{kind}.json", {**_process_facts(child.pid), "log": log})
    return {"run": root.name, "job": kind, "status": "running", "log": log}


def _launch(ws: Workspace, argv: list[str], log: Path) -> subprocess.Popen:
    """A `tunesmith` process in the workspace folder, its own session (a door that restarts or
    gets Ctrl-C leaves it running), output to its log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "tunesmith.cli.main", *argv],
            cwd=ws.root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    _children[child.pid] = child
    return child


def _reap() -> None:
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            del _children[pid]


def _process_facts(pid: int) -> dict[str, Any]:
    return {"pid": pid, "host": socket.gethostname(), "boot": boot_id(), "started": time.time()}


def _read_queue(ws: Workspace) -> list[dict]:
    return (runs.read_json(ws.root / QUEUE) or {}).get("queue", [])


def _write_queue(ws: Workspace, queue: list[dict]) -> None:
    atomic_write(ws.root / QUEUE, json.dumps({"queue": queue}, indent=1) + "\n")


@contextlib.contextmanager
def _queue_lock(ws: Workspace):
    """Two doors (or two pages) starting the next queued run at once must not start two."""
    lock = ws.root / ".tunesmith" / "queue.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _job(root: Path, kind: str) -> dict | None:
    _reap()
    return runs.read_json(root / "jobs" / f"{kind}.json")


def _serve_record(ws: Workspace) -> dict | None:
    _reap()
    return runs.read_json(ws.root / SERVE_RECORD)


def _data_files(ws: Workspace, files: Sequence[str]) -> list[str]:
    if not files:
        raise TunesmithError("give at least one data file")
    paths = [ws.resolve(f, "data file") for f in files]
    for given, path in zip(files, paths, strict=True):
        if not path.is_file():
            raise TunesmithError(f"data file '{given}' not found in the workspace")
    return [str(p) for p in paths]


def data_source(ws: Workspace, files: Sequence[str], fmt: str = "auto"):
    """(paths, format, columns) of what a door names: data files, or one dataset entry as
    `REGISTRY::NAME` (LLaMA-Factory's dataset_info.json read unchanged, or a tunesmith YAML
    registry), whose files must lie inside the workspace too."""
    entries = [f for f in files if ENTRY in f]
    if not entries:
        return _data_files(ws, files), fmt, {}
    if len(files) > 1:
        raise TunesmithError(f"give one dataset entry at a time, not {', '.join(files)}")
    from tunesmith.data.registry import dataset_source

    registry, name = entries[0].split(ENTRY, 1)
    files, entry_fmt, columns = dataset_source(ws.resolve(registry, "registry"), [name])
    paths = [str(ws.resolve(path, f"dataset '{name}' file")) for path in files]
    return paths, entry_fmt if fmt == "auto" else fmt, columns


def dataset_entries(ws: Workspace, registry: str) -> list[str]:
    """`REGISTRY::NAME` of every entry of a registry file in the workspace with local files
    (hub-only entries cannot be read offline)."""
    from tunesmith.data.registry import load_registry

    entries = load_registry(ws.resolve(registry, "registry"))
    return [f"{registry}{ENTRY}{name}" for name, entry in entries.items() if entry.files]


def _tokenizer(ws: Workspace, ref: str):
    from tunesmith.config.schema import ModelConfig
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.resolve import resolve_model

    ref = _ref_inside(ws, ref, "tokenizer")
    return load_tokenizer(resolve_model(ref), ModelConfig(name_or_path=ref))


def _validated(model_cls, settings: dict, source: str):
    from pydantic import ValidationError

    try:
        return model_cls.model_validate(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(map(str, first["loc"]))
        raise TunesmithError(f"{source}: {key}: {first['msg']}") from None


def _inside(ws: Workspace, value, key: str):
    if value is None:
        return None
    if isinstance(value, list):
        return [str(ws.resolve(v, key)) for v in value]
    return str(ws.resolve(value, key))


def _ref_inside(ws: Workspace, value, key: str):
    """A model reference that is a path (absolute, `.`/`~`-led, or existing in the workspace)
    must lie inside it; aliases, hub ids and URLs pass as they are."""
    if not isinstance(value, str) or "://" in value:
        return value
    local = value.removeprefix("local:")
    looks_like_path = (
        local.startswith((".", "~", "/")) or ".." in Path(local).parts or (ws.root / local).exists()
    )
    if not looks_like_path:
        return value
    return value[: len(value) - len(local)] + str(ws.resolve(local, key))


def _update(data: dict, dotted: str, change) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.get(part)
        if not isinstance(data, dict):
            return
    if leaf in data:
        data[leaf] = change(data[leaf])


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
