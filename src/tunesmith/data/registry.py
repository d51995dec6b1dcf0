"""Dataset registries: LLaMA-Factory's `dataset_info.json` (read unchanged) and tunesmith's YAML.

A registry names datasets, so a run can say `data.dataset: identity` instead of listing files,
format and columns. Both kinds load into the same DatasetEntry, its columns translated into
tunesmith's canonical names (`formats.COLUMN_NAMES`, plus `text` for pre-training text).

tunesmith's YAML registry maps names to entries; files are relative to the registry's folder:

    my_chat:
      file: chats/train.jsonl   # or `files: [a.jsonl, b.jsonl]`; a folder means its data files
      format: sharegpt          # auto (default) | alpaca | sharegpt | openai | text
      columns:                  # canonical name -> column in the file, as in data.columns;
        conversations: dialog   # chosen, rejected, kto_tag, tools, images... are kept in `extra`
      kind: sft                 # sft (default) | preference | kto | pretrain (format text)
      description: free text    # optional, for people
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import yaml

from tunesmith.data.formats import COLUMN_NAMES, FORMATS
from tunesmith.data.readers import SUPPORTED_SUFFIXES
from tunesmith.utils.errors import ConfigError

if TYPE_CHECKING:
    from tunesmith.config.schema import DataConfig

KINDS = ("sft", "preference", "kto", "pretrain")
TEXT = "text"  # the format of pre-training data: one `text` column
REGISTRY_SUFFIXES = (".json", ".yaml", ".yml")
# Files a folder entry contributes (.txt: plain-text pre-training documents).
DATA_SUFFIXES = tuple(dict.fromkeys((*SUPPORTED_SUFFIXES, ".txt")))
_CANONICAL = frozenset(n for names in COLUMN_NAMES.values() for n in names) | {TEXT}

# LLaMA-Factory's names -> ours, per `formatting`. Anything else goes to `extra` unchanged.
_LF_COLUMNS = {
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
    },
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
}
_LF_TAGS = (
    "role_tag",
    "content_tag",
    "user_tag",
    "assistant_tag",
    "system_tag",
    "function_tag",
    "observation_tag",
)
_LF_HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_YAML_KEYS = ("file", "files", "format", "columns", "kind", "description")
_YAML_EXTRA = ("chosen", "rejected", "kto_tag", "tools", "images", "videos", "audios")


@dataclass
class DatasetEntry:
    name: str
    files: list[Path]  # after resolve_dataset: existing data files, folders expanded
    fmt: str  # alpaca | sharegpt | openai | auto | text
    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> file column
    ranking: bool = False  # pairs of chosen/rejected answers
    kind: str = "sft"  # sft | preference | kto | pretrain
    source: str = ""  # the registry file
    line: int | None = None  # where the entry starts in it
    hub: str | None = None  # e.g. "hf_hub_url: llamafactory/alpaca_en"
    extra: dict[str, str] = field(default_factory=dict)  # columns no reader of ours uses yet

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


class Source(NamedTuple):
    """Files read with one format and one column mapping."""

    paths: list[str]
    fmt: str
    columns: dict[str, str]


def load_registry(path: str | Path) -> dict[str, DatasetEntry]:
    """Every entry of a registry: `.json` is LLaMA-Factory's format, `.yaml`/`.yml` ours."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in REGISTRY_SUFFIXES:
        raise ConfigError(
            f"{p}: unsupported registry type '{p.suffix or '(none)'}'; expected .json "
            "(LLaMA-Factory dataset_info.json) or .yaml/.yml (tunesmith registry)"
        )
    if not p.is_file():
        raise ConfigError(f"{p}: no such registry file")
    text = p.read_text(encoding="utf-8")
    data = _parse(text, p, suffix)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}: expected a mapping of dataset names to entries, got {type(data).__name__}"
        )
    parse = _from_llamafactory if suffix == ".json" else _from_yaml
    entries = {}
    for key, raw in data.items():
        name = str(key)
        entry = DatasetEntry(name, [], "auto", source=str(p), line=_line_of(text, name))
        if not isinstance(raw, dict):
            raise _entry_error(entry, f"expected a mapping, got {type(raw).__name__}")
        entries[name] = parse(entry, raw, p.parent)
    return entries


def resolve_dataset(registry: str | Path, name: str) -> DatasetEntry:
    """The entry `name` with its files checked and folders expanded to their data files."""
    return _resolve(load_registry(registry), name, registry)


def dataset_source(registry: str | Path, names: list[str]) -> Source:
    """The files, format and column mapping of registry entries read together (one format)."""
    entries = [resolve_dataset(registry, name) for name in names]
    if len({e.fmt for e in entries}) > 1:
        raise ConfigError(f"datasets {names} have different formats; give one at a time")
    columns = {k: v for e in entries for k, v in e.columns.items()}
    return Source([str(f) for e in entries for f in e.files], entries[0].fmt, columns)


def sft_sources(cfg: DataConfig) -> list[Source]:
    """What SFT reads: data.train (with data.format and data.columns), then each dataset of
    data.dataset with the format and columns of its registry entry, data.columns on top."""
    return _sources(cfg, "sft", cfg.format)


def pretrain_sources(cfg: DataConfig) -> list[Source]:
    """What pre-training reads: data.train as plain text, then data.dataset entries of kind
    pretrain; data.columns may rename the `text` column."""
    return _sources(cfg, "pretrain", TEXT)


def preference_sources(cfg: DataConfig, kto: bool = False) -> list[Source]:
    """What the preference stages read: data.train, then data.dataset entries of kind
    preference (and kto for train.stage=kto), their chosen/rejected/kto_tag columns kept."""
    return _sources(cfg, "kto" if kto else "preference", cfg.format)


# Columns the preference readers (data/preference.py) rename besides the formats' own.
_PREFERENCE_EXTRA = ("chosen", "rejected", "kto_tag")


def _sources(cfg: DataConfig, kind: str, train_fmt: str) -> list[Source]:
    sources = [Source(list(cfg.train), train_fmt, dict(cfg.columns))] if cfg.train else []
    if not cfg.dataset:
        return sources
    if not cfg.registry:
        raise ConfigError(
            f"data.registry: data.dataset names {cfg.dataset} but no registry is given "
            "(e.g. data.registry=data/dataset_info.json)"
        )
    try:
        entries = load_registry(cfg.registry)
    except ConfigError as e:
        raise ConfigError(f"data.registry: {e}") from None
    for name in cfg.dataset:
        try:
            entry = _resolve(entries, name, cfg.registry)
        except ConfigError as e:
            raise ConfigError(f"data.dataset: {e}") from None
        # train.stage=kto also reads pairs (chosen: desirable, rejected: undesirable)
        if entry.kind != kind and not (kind == "kto" and entry.kind == "preference"):
            raise ConfigError(f"data.dataset: {_wrong_kind(entry, kind)}")
        files = [str(f) for f in entry.files]
        ranking = {k: v for k, v in entry.extra.items() if k in _PREFERENCE_EXTRA}
        if kind not in ("preference", "kto"):
            ranking = {}
        columns = {**entry.columns, **ranking, **cfg.columns}
        sources.append(Source(files, entry.fmt, columns))
    return sources


def _wrong_kind(entry: DatasetEntry, wanted: str) -> str:
    found = f"'{entry.name}' is {entry.kind} data ({entry.where})"
    if wanted == "pretrain":
        return f"{found}; train.stage=pt reads pretrain (plain text) datasets only"
    if wanted in ("preference", "kto"):
        return f"{found}; the preference stages read preference (ranking) or kto datasets"
    hint = " (train it with train.stage=pt)" if entry.kind == "pretrain" else ""
    return f"{found}; the {entry.kind} stage is not supported by SFT yet{hint}"


# --- reading entries --------------------------------------------------------------------


def _parse(text: str, path: Path, suffix: str) -> object:
    try:
        return json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except yaml.MarkedYAMLError as e:
        line = f":{e.problem_mark.line + 1}" if e.problem_mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None


def _line_of(text: str, name: str) -> int | None:
    # The first line that starts with the name as a key: good enough to point a person there.
    match = re.search(rf"^[ \t]*[\"']?{re.escape(name)}[\"']?[ \t]*:", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _entry_error(entry: DatasetEntry, reason: str) -> ConfigError:
    return ConfigError(f"{entry.where}: dataset '{entry.name}': {reason}")


def _mapping(entry: DatasetEntry, raw: dict, key: str) -> dict[str, str]:
    value = raw.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _entry_error(entry, f"'{key}' must map names to column names (strings)")
    return {str(k): v for k, v in value.items()}


def _from_llamafactory(entry: DatasetEntry, raw: dict, folder: Path) -> DatasetEntry:
    fmt = raw.get("formatting", "alpaca")
    if fmt not in _LF_COLUMNS:
        raise _entry_error(entry, f"formatting '{fmt}' unknown; allowed: alpaca, sharegpt")
    cols, tags = _mapping(entry, raw, "columns"), _mapping(entry, raw, "tags")
    ranking = bool(raw.get("ranking", False))
    kind = _llamafactory_kind(fmt, cols, ranking)
    columns: dict[str, str] = {}
    extra: dict[str, str] = {}
    if kind == "pretrain":  # LLaMA-Factory reads pre-training text from the `prompt` column
        fmt, columns[TEXT] = TEXT, cols.pop("prompt")
    for name, column in cols.items():
        ours = _LF_COLUMNS.get(fmt, {}).get(name)
        (columns if ours else extra)[ours or name] = column
    for tag, value in tags.items():  # tags only mean something to sharegpt
        (columns if fmt == "sharegpt" and tag in _LF_TAGS else extra)[tag] = value
    file_name = raw.get("file_name")
    if file_name is not None and not isinstance(file_name, str):
        raise _entry_error(entry, "'file_name' must be a string")
    hub = next((f"{k}: {raw[k]}" for k in _LF_HUB_KEYS if raw.get(k)), None)
    if file_name is None and hub is None:
        raise _entry_error(entry, f"no 'file_name' and no hub address ({', '.join(_LF_HUB_KEYS)})")
    files = [folder / file_name] if file_name else []
    return replace(
        entry,
        files=files,
        fmt=fmt,
        columns=columns,
        ranking=ranking,
        kind=kind,
        hub=hub,
        extra=extra,
    )


def _llamafactory_kind(fmt: str, cols: dict[str, str], ranking: bool) -> str:
    if ranking:
        return "preference"
    if "kto_tag" in cols:
        return "kto"
    if fmt == "alpaca" and "prompt" in cols and "response" not in cols:
        return "pretrain"
    return "sft"


def _from_yaml(entry: DatasetEntry, raw: dict, folder: Path) -> DatasetEntry:
    _check_keys(entry, raw)
    kind = raw.get("kind", "sft")
    if kind not in KINDS:
        raise _entry_error(entry, f"kind '{kind}' unknown; allowed: {', '.join(KINDS)}")
    fmt = raw.get("format", TEXT if kind == "pretrain" else "auto")
    allowed = ("auto", *FORMATS, TEXT)
    if fmt not in allowed:
        raise _entry_error(entry, f"format '{fmt}' unknown; allowed: {', '.join(allowed)}")
    if (fmt == TEXT) != (kind == "pretrain"):
        raise _entry_error(entry, "format 'text' goes with kind 'pretrain', and only with it")
    columns, extra = {}, {}
    for name, column in _mapping(entry, raw, "columns").items():
        if name not in _CANONICAL | set(_YAML_EXTRA):
            known = ", ".join(sorted(_CANONICAL | set(_YAML_EXTRA)))
            raise _entry_error(entry, f"unknown column name '{name}'; allowed: {known}")
        (columns if name in _CANONICAL else extra)[name] = column
    files = [folder / f for f in _yaml_files(entry, raw)]
    kwargs = {"columns": columns, "extra": extra, "ranking": kind == "preference"}
    return replace(entry, files=files, fmt=fmt, kind=kind, **kwargs)


def _check_keys(entry: DatasetEntry, raw: dict) -> None:
    for key in raw:
        if key not in _YAML_KEYS:
            close = difflib.get_close_matches(str(key), _YAML_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise _entry_error(
                entry, f"unknown key '{key}'{hint}; allowed: {', '.join(_YAML_KEYS)}"
            )


def _yaml_files(entry: DatasetEntry, raw: dict) -> list[str]:
    if ("file" in raw) == ("files" in raw):
        raise _entry_error(entry, "give exactly one of 'file' (a path) or 'files' (a list)")
    files = [raw["file"]] if "file" in raw else raw["files"]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise _entry_error(entry, "'file' must be a path and 'files' a non-empty list of paths")
    return files


# --- resolving a name to files ----------------------------------------------------------


def _resolve(entries: dict[str, DatasetEntry], name: str, registry: str | Path) -> DatasetEntry:
    entry = entries.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"{registry}: no dataset named '{name}'{hint}")
    if entry.hub and not any(f.exists() for f in entry.files):
        raise _entry_error(
            entry,
            f"the data is on a hub ({entry.hub}) and tunesmith reads local files only: "
            "download it and give the entry a local 'file_name' (or list the files in data.train)",
        )
    return replace(entry, files=[f for path in entry.files for f in _data_files(entry, path)])


def _data_files(entry: DatasetEntry, path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise _entry_error(entry, f"no such file or folder: {path}")
    files = sorted(
        f
        for f in path.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in DATA_SUFFIXES
    )
    if not files:
        raise _entry_error(entry, f"folder {path} holds no data files ({', '.join(DATA_SUFFIXES)})")
    return files
