"""Dataset versions and lineage: a `<data>.meta.json` beside every file a tunesmith step writes.

A version is identified by the content hash of its records (not of the file bytes), so the same
records written as JSONL, JSON, CSV or parquet, or with keys in another order, share one hash.
Each version names its parents with their hashes at the time it was made; `lineage` walks those
links back to the original inputs and shows how the metrics moved at each step.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunesmith.data.readers import read_records
from tunesmith.runs.folder import atomic_write
from tunesmith.utils.errors import DataError

META_SUFFIX = ".meta.json"


def dataset_hash(records: Iterable[dict]) -> str:
    """sha256 over canonical JSON lines: independent of file format and key order."""
    digest = hashlib.sha256()
    for record in records:
        line = json.dumps(
            record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
        )
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def meta_path(data_path: str | Path) -> Path:
    return Path(f"{data_path}{META_SUFFIX}")


def read_meta(data_path: str | Path) -> dict | None:
    """The version record of a data file, or None when it has none."""
    path = meta_path(data_path)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a valid version file ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: not a valid version file (expected a JSON object)")
    return meta


def file_hash(path: str | Path) -> str:
    """Hash of a data file: its version record's hash when present, else computed."""
    meta = read_meta(path)
    if meta and meta.get("hash"):
        return meta["hash"]
    try:
        return dataset_hash(r.data for r in read_records(path))
    except DataError:
        # A file the readers refuse (a .md input, a JSONL with broken lines that `clean`
        # tolerated) still needs an identity: fall back to its bytes.
        return "bytes:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_version(
    data_path: Path,
    records: list[dict],
    operation: str,
    params: dict,
    parents: Sequence[Path] = (),
    metrics: dict | None = None,
) -> Path:
    """Write `<data_path>.meta.json` for `records` (the records just written to data_path)."""
    return write_version_digest(
        data_path, dataset_hash(records), len(records), operation, params, parents, metrics
    )


def write_version_digest(
    data_path: Path,
    digest: str,
    size: int,
    operation: str,
    params: dict,
    parents: Sequence[Path] = (),
    metrics: dict | None = None,
) -> Path:
    """`write_version` for records hashed as they were written (`dataset_hash`'s digest and
    their count), so a streaming writer never holds them."""
    data_path = Path(data_path)
    meta = {
        "hash": digest,
        "size": size,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "operation": operation,
        "params": params,
        "parents": [_parent_entry(Path(p), data_path) for p in parents],
        "metrics": metrics or {},
    }
    path = meta_path(data_path)
    text = json.dumps(meta, ensure_ascii=False, indent=2, default=str) + "\n"
    atomic_write(path, text)  # a reader never sees half a version file
    return path


def _parent_entry(parent: Path, child: Path) -> dict:
    if not parent.is_file():
        raise DataError(f"{parent}: parent data file not found (needed to version {child})")
    # Stored relative to the child's folder, so moving a project folder keeps its lineage.
    rel = os.path.relpath(parent.resolve(), child.resolve().parent)
    return {"path": Path(rel).as_posix(), "hash": file_hash(parent)}


# --- lineage ------------------------------------------------------------------------------


def lineage(data_path: Path) -> list[dict]:
    """All versions that led to data_path, oldest first, data_path last.

    Each entry: path, hash, operation, created, size, params, metrics, parents (paths),
    delta (numeric metric changes vs its first parent that has metrics) and notes. Broken
    links (missing files, parents changed since, cycles) become notes, never exceptions.
    """
    chain: list[dict] = []
    _visit(Path(data_path), None, chain, done=set(), on_path=set())
    for entry in chain:
        del entry["key"]  # traversal bookkeeping only
    return chain


def _visit(path: Path, recorded: str | None, chain: list, done: set, on_path: set) -> dict:
    key = os.path.normcase(os.path.abspath(path))
    entry = _entry(path)
    if key in on_path:
        entry["notes"].append(f"cycle: {path} is its own ancestor (overwritten in place?)")
        return _bare(entry, chain)
    if key in done:
        return next(e for e in chain if e["key"] == key)
    if not path.is_file():
        entry["notes"].append("missing: no such file")
        return _bare(entry, chain, recorded)
    try:
        meta = read_meta(path)
    except DataError as e:
        entry["notes"].append(str(e))
        return _bare(entry, chain, recorded)
    if meta is None:
        entry["notes"].append("original input (no version file)")
        return _bare(entry, chain, recorded)
    if recorded and meta.get("hash") != recorded:
        entry["notes"].append(
            f"changed since its child was made (recorded hash {recorded[:12]}, now "
            f"{str(meta.get('hash'))[:12]}); its own history is not shown"
        )
        return _bare(entry, chain, recorded)
    on_path.add(key)
    parents = [_visit(*_parent_ref(path, p), chain, done, on_path) for p in _parents(meta)]
    on_path.discard(key)
    done.add(key)
    entry.update({k: meta.get(k) for k in ("hash", "operation", "created", "size", "params")})
    entry["metrics"] = meta.get("metrics") or {}
    entry["parents"] = [p["path"] for p in parents]
    base = next((p["metrics"] for p in parents if p.get("metrics")), {})
    entry["delta"] = metric_delta(base, entry["metrics"])
    chain.append(entry)
    return entry


def _entry(path: Path) -> dict:
    return {
        "key": os.path.normcase(os.path.abspath(path)),
        "path": str(path),
        "hash": None,
        "operation": None,
        "created": None,
        "size": None,
        "params": {},
        "metrics": {},
        "parents": [],
        "delta": {},
        "notes": [],
    }


def _bare(entry: dict, chain: list, recorded: str | None = None) -> dict:
    """A link that is shown but not followed further."""
    entry["hash"] = recorded
    chain.append(entry)
    return entry


def _parents(meta: dict) -> list[dict]:
    parents = meta.get("parents") or []
    return [p for p in parents if isinstance(p, dict) and isinstance(p.get("path"), str)]


def _parent_ref(child: Path, parent: dict) -> tuple[Path, str | None]:
    path = Path(parent["path"])
    if not path.is_absolute():
        path = Path(os.path.normpath(child.parent / path))
    return path, parent.get("hash")


def metric_delta(before: dict, after: dict) -> dict:
    """after - before for metrics numeric in both (bools are flags, not numbers)."""

    def numeric(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    return {
        k: round(after[k] - before[k], 6)
        for k in after
        if k in before and numeric(after[k]) and numeric(before[k])
    }


def format_lineage(chain: list[dict]) -> str:
    """Human-readable lineage, oldest first, for `tunesmith data log`."""
    if not chain:
        return "(no lineage)"
    lines: list[str] = []
    for n, entry in enumerate(chain, start=1):
        lines += _format_entry(n, entry)
    return "\n".join(lines)


def _format_entry(n: int, entry: dict) -> list[str]:
    head = f"{n}. {entry['path']}"
    if entry["operation"]:
        head += f"  [{entry['operation']}]"
    if entry["size"] is not None:
        head += f"  {entry['size']} records"
    if entry["hash"]:
        head += f"  {entry['hash'][:12]}"
    if entry["created"]:
        head += f"  {entry['created']}"
    lines = [head]
    if entry["parents"]:
        lines.append(f"   from: {', '.join(entry['parents'])}")
    shown = {k: v for k, v in entry["metrics"].items() if not isinstance(v, dict | list)}
    if shown:
        parts = [_format_metric(k, v, entry["delta"].get(k)) for k, v in shown.items()]
        lines.append(f"   metrics: {', '.join(parts)}")
    lines += [f"   note: {note}" for note in entry["notes"]]
    return lines


def _format_metric(key: str, value: Any, delta: float | None) -> str:
    text = f"{key} {_num(value)}"
    if delta is not None:
        text += f" ({'+' if delta >= 0 else ''}{_num(delta)})"
    return text


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
