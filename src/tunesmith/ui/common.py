"""What every tab shares: the page's context, handlers that answer with a sentence instead of a
traceback, workspace file lists, run choices, report embedding and loaded chat engines."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import html
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from tunesmith.utils.errors import TunesmithError
from tunesmith.workshop import actions
from tunesmith.workshop.workspace import Workspace

log = logging.getLogger("tunesmith.ui")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
REGISTRY = "dataset_info.json"  # LLaMA-Factory's; its entries are listed with the files
SKIP_DIRS = {"runs", ".tunesmith", ".git", ".venv", "node_modules", "__pycache__"}


@dataclass
class Ctx:
    ws: Workspace
    s: dict[str, str]  # the page's strings (ui/strings.py)
    lang: str
    max_upload_mb: int = 200

    def t(self, key: str, **values) -> str:
        return self.s[key].format(**values) if values else self.s[key]


def sentence(exc: BaseException) -> str:
    """The one sentence a page shows for an error; the traceback goes to the server's log."""
    if isinstance(exc, TunesmithError):
        return str(exc)
    log.exception("ui action failed")
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def guarded(outputs: int):
    """A handler whose first output is the message box: an error becomes its sentence there
    (prefixed with a warning sign) and the other outputs stay as they were."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args):
            try:
                return fn(*args)
            except Exception as exc:
                message = f"⚠ {sentence(exc)}"
                return message if outputs == 1 else (message, *[gr.skip()] * (outputs - 1))

        return run

    return wrap


def run_names(ctx: Ctx) -> list[str]:
    return [row["name"] for row in actions.list_runs(ctx.ws)["runs"]]


def trained_runs(ctx: Ctx) -> list[str]:
    """Runs with a trained adapter or model: what chat, export and the arena can open."""
    rows = actions.list_runs(ctx.ws)["runs"]
    return [
        r["name"]
        for r in rows
        if any((ctx.ws.root / r["path"] / d).is_dir() for d in ("adapter", "model"))
    ]


def run_picker(ctx: Ctx, names: list[str], elem_id: str, label: str = "run"):
    """(dropdown of `names`, its Refresh button) in one row: the head of the run tabs (and of
    the Assistant tab, `label` naming what is listed)."""
    with gr.Row():
        run = gr.Dropdown(
            names,
            value=names[0] if names else None,
            label=ctx.t(label),
            scale=3,
            elem_id=elem_id,
        )
        refresh = gr.Button(ctx.t("refresh"), scale=0)
    return run, refresh


def data_files(ctx: Ctx, limit: int = 200) -> list[str]:
    """Data files of the workspace (relative paths), outside runs and tunesmith's own folders,
    then the entries of each dataset_info.json as REGISTRY::NAME."""
    found, entries = [], []
    for path in sorted(ctx.ws.root.rglob("*")):
        parts = path.relative_to(ctx.ws.root).parts
        if SKIP_DIRS & set(parts[:-1]) or len(parts) > 4:
            continue
        if path.suffix in DATA_SUFFIXES and path.is_file() and not path.name.startswith("."):
            found.append(str(Path(*parts)))
        if path.name == REGISTRY and path.is_file():
            with contextlib.suppress(TunesmithError):  # a broken registry: inspecting says why
                entries += actions.dataset_entries(ctx.ws, str(Path(*parts)))
        if len(found) >= limit:
            break
    return found + entries[:limit]


def embedded(path: Path, height: int = 600) -> str:
    """An HTML report inside the page (its own document in a sandboxed frame)."""
    body = html.escape(path.read_text(encoding="utf-8", errors="replace"), quote=True)
    return (
        f'<iframe sandbox="" style="width:100%;height:{height}px;border:1px solid #ddd" '
        f'srcdoc="{body}"></iframe>'
    )


def refresh_choices(choices: list[str], value: str | None = None):
    """The list read again: `value` kept while it is still listed, else the first (newest)."""
    keep = value if value in choices else (choices[0] if choices else None)
    return gr.update(choices=choices, value=keep)


def kept_or_none(choices: list[str], value: str | None = None):
    """The list read again: `value` kept while it is still listed, else nothing chosen."""
    return gr.update(choices=choices, value=value if value in choices else None)


def chosen(choices: list[str], value: str | None):
    """`value` chosen even where the list lacks it (an untrained run opened in Chat): the tab
    then says why it cannot use it, rather than quietly choosing another run."""
    listed = choices if not value or value in choices else [value, *choices]
    return gr.update(choices=listed, value=value)


class Engines:
    """Loaded models for chat and the arena, by run folder (and "base" of a run); the two most
    recently used runs stay loaded, so switching back and forth does not reload. `root` is the
    workspace, where a run's relative model path points (its training ran there)."""

    def __init__(self, root: Path | None = None, keep: int = 4):
        self.root = root
        self.keep = keep
        self._loaded: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_dir: Path, base: bool = False):
        key = (str(run_dir), base, _stamp(run_dir))
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = _load(run_dir, base, self.root)
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return self._loaded[key]


def _stamp(run_dir: Path) -> float:
    """When the run's artifact last changed: a resumed run reloads."""
    for name in ("adapter", "model"):
        if (run_dir / name).is_dir():
            return (run_dir / name).stat().st_mtime
    raise TunesmithError(f"run '{run_dir.name}' has no trained adapter or model yet")


def _load(run_dir: Path, base: bool, root: Path | None):
    from tunesmith.models.engine import TransformersEngine
    from tunesmith.runs.trained import open_run

    run = _based_in(open_run(run_dir), root)
    if not base:
        return TransformersEngine(*run.load())
    # the run's tokenizer for both: the same template, so only the weights differ
    return TransformersEngine(run.load_untrained(), run.load_tokenizer())


def _based_in(run, root: Path | None):
    """The run with its base model where its training found it: training ran in the workspace
    folder, so a relative `model.name_or_path` is the workspace's folder, wherever the server
    was started (a hub id or an embedded alias is no folder there and stays as it is)."""
    cfg = run.model_cfg
    if root is None or cfg is None or Path(cfg.name_or_path).is_absolute():
        return run
    local = root / cfg.name_or_path
    if not local.exists():
        return run
    return dataclasses.replace(run, model_cfg=cfg.model_copy(update={"name_or_path": str(local)}))
