"""The build's stage runner: named stages in order, each skipped when the content hash of its
inputs (settings, source files, the records of the stages it reads) is unchanged and its
artefacts are still there; `--from STAGE` redoes that stage and every later one.

A stage writes its artefacts atomically (a temporary file renamed into place, or a folder named
after its input hash) and is recorded in the context's state file (`.assistant/state.json` for
an assistant, `.improve/state.json` for an improvement cycle) only when it has finished, so an
interrupted or failed stage is simply run again next time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.runs.folder import atomic_write
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError
from tunesmith.workflows.assistant.spec import AssistantSpec

STATE = ".assistant/state.json"


@dataclass
class Context:
    spec: AssistantSpec
    root: Path  # the project folder: assistant.yaml's folder
    records: dict[str, dict] = field(default_factory=dict)  # finished stages' records
    key: str = ""  # the running stage's input hash
    state_file: str = STATE  # relative to root: the finished stages and their input hashes

    def path(self, relative: str) -> Path:
        return self.root / relative

    def source(self, name: str) -> Path:
        """A path named in assistant.yaml (relative to its folder)."""
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.root / path

    def write_json(self, relative: str, data) -> str:
        atomic_write(self.path(relative), json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return relative

    def write_jsonl(self, relative: str, rows: list[dict]) -> str:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        atomic_write(self.path(relative), text)
        return relative

    def read_json(self, relative: str):
        return json.loads(self.path(relative).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Stage:
    name: str
    what: str  # one line for the console
    inputs: Callable[[Context], object]  # JSON-able; files as their content hashes
    run: Callable[[Context], dict]  # the record; "outputs": the artefacts' relative paths


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_hash(ctx: Context, names: list[str]) -> dict[str, str | None]:
    """Content hash of each named source (None when missing: the stage itself says so)."""
    out = {}
    for name in names:
        path = ctx.source(name)
        out[name] = file_hash(path) if path.is_file() else None
    return out


def digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_of(ctx: Context, name: str) -> str:
    """The hash of a finished stage's record: what a later stage's inputs name it by."""
    return ctx.records[name]["hash"]


def run_stages(
    stages: list[Stage], ctx: Context, from_stage: str | None = None, until: str | None = None
) -> list[tuple[str, str]]:
    """Run or skip each stage; returns (stage, "ran" | "skipped")."""
    names = [s.name for s in stages]
    for option, value in (("--from", from_stage), ("--until", until)):
        if value is not None and value not in names:
            raise ConfigError(f"{option}: unknown stage '{value}'; stages: {', '.join(names)}")
    state_path = ctx.path(ctx.state_file)
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    forced, done = False, []
    for number, stage in enumerate(stages, start=1):
        forced = forced or stage.name == from_stage
        key = digest(stage.inputs(ctx))
        old = state.get(stage.name)
        label = f"{number}/{len(stages)} {stage.name}"
        if not forced and old and old["inputs"] == key and _outputs_intact(ctx, old["record"]):
            console.print(f"[dim]{label}: unchanged, skipped[/dim]")
            ctx.records[stage.name] = old["record"]
            done.append((stage.name, "skipped"))
        else:
            console.rule(f"{label}: {stage.what}")
            ctx.key = key
            started = time.perf_counter()
            record = stage.run(ctx)
            record["seconds"] = round(time.perf_counter() - started, 2)
            record["outputs_hash"] = {
                out: file_hash(ctx.path(out))
                for out in record.get("outputs", [])
                if ctx.path(out).is_file()
            }
            record["hash"] = digest({k: v for k, v in record.items() if k != "seconds"})
            ctx.records[stage.name] = record
            state[stage.name] = {
                "inputs": key,
                "record": record,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            # later stages' old records stay: their input hashes decide whether they rerun
            atomic_write(state_path, json.dumps(state, indent=2, ensure_ascii=False) + "\n")
            done.append((stage.name, "ran"))
        if stage.name == until:
            break
    return done


def _outputs_intact(ctx: Context, record: dict) -> bool:
    hashes = record.get("outputs_hash", {})
    for out in record.get("outputs", []):
        path = ctx.path(out)
        if not path.exists():
            return False
        if out in hashes and path.is_file() and file_hash(path) != hashes[out]:
            return False
    return True


def replace_folder(staging: Path, final: Path) -> None:
    """Move a finished folder into place (the old one goes only once the new one is whole)."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
