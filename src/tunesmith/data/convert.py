"""Write data back out: a conversation in any format, files by suffix, splits and balancing.

`to_record` is the inverse of `formats.to_conversation`: for every canonical conversation `m`
and format `f`, reading `to_record(m, f)` as `f` gives `m` back, so files convert between
alpaca, sharegpt and openai without loss.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path

from tunesmith.data.formats import FORMATS, load_conversations
from tunesmith.data.readers import RawRecord
from tunesmith.data.tools import uses_tools
from tunesmith.runs.folder import atomic_path
from tunesmith.utils.errors import DataError

WRITE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
STRATEGIES = ("oversample", "undersample")
_SHAREGPT_ROLES = {"user": "human", "assistant": "gpt"}


# --- one conversation -> one record -----------------------------------------------------


def to_record(messages: list[dict], fmt: str, tools: list[dict] | None = None) -> dict:
    """A canonical conversation (optional system, then user/assistant pairs) as a `fmt` record.

    alpaca: the last pair is instruction/output (input ""), earlier pairs `history`;
    sharegpt: `conversations` of from/value turns, the system prompt in a `system` field;
    openai: `messages` of role/content. Optional fields appear only when they hold something.
    A tool conversation (data/tools.py) becomes LLaMA-Factory's function_call/observation turns
    and `tools` column (sharegpt) or OpenAI's tool_calls/tool messages and `tools` (openai);
    alpaca has no way to hold it (ValueError).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if tools or uses_tools(messages):
        return _tool_record(messages, fmt, tools)
    system, pairs = _pairs(messages)
    if fmt == "openai":
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    if fmt == "sharegpt":
        turns = [
            {"from": _SHAREGPT_ROLES[role], "value": text}
            for pair in pairs
            for role, text in zip(("user", "assistant"), pair, strict=True)
        ]
        return {"conversations": turns, **({"system": system} if system else {})}
    record = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1]}
    if system:
        record["system"] = system
    if len(pairs) > 1:
        record["history"] = [list(pair) for pair in pairs[:-1]]
    return record


def _tool_record(messages: list[dict], fmt: str, tools: list[dict] | None) -> dict:
    if fmt == "alpaca":
        raise ValueError("alpaca cannot hold tool calls; convert to sharegpt or openai")
    if fmt == "openai":
        out = []
        for m in messages:
            message = {"role": m["role"], "content": m["content"]}
            if m.get("tool_calls"):
                message["content"] = m["content"] or None
                message["tool_calls"] = [
                    {
                        "type": "function",
                        "function": {
                            "name": c["function"]["name"],
                            "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False),
                        },
                    }
                    for c in m["tool_calls"]
                ]
            if m["role"] == "tool" and m.get("name"):
                message["name"] = m["name"]
            out.append(message)
        return {"messages": out, **({"tools": tools} if tools else {})}
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = []
    for m in messages[1:] if system else messages:
        if m.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                for c in m["tool_calls"]
            ]
            value = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            turns.append({"from": "function_call", "value": value})
        elif m["role"] == "tool":
            turns.append({"from": "observation", "value": m["content"]})
        else:
            turns.append({"from": _SHAREGPT_ROLES[m["role"]], "value": m["content"]})
    record: dict = {"conversations": turns, **({"system": system} if system else {})}
    if tools:
        record["tools"] = json.dumps([t["function"] for t in tools], ensure_ascii=False)
    return record


def _pairs(messages: list[dict]) -> tuple[str | None, list[tuple[str, str]]]:
    turns = list(messages)
    system = turns.pop(0)["content"] if turns and turns[0].get("role") == "system" else None
    roles = [t.get("role") for t in turns]
    if not turns or roles != ["user", "assistant"] * (len(turns) // 2) or len(turns) % 2:
        raise ValueError(
            "expected an optional system message, then user/assistant turns alternating and "
            f"ending with the assistant; got roles {[m.get('role') for m in messages]}"
        )
    return system, [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns), 2)]


# --- files ------------------------------------------------------------------------------


def write_records(path: str | Path, records: Iterable[dict]) -> int:
    """Write records by suffix (.jsonl, .json, .csv, .parquet); return how many were written.

    The file appears whole or not at all (temporary file + rename), so a failure halfway
    leaves any previous version in place. Missing parent folders are created.
    """
    p = Path(path)
    writer = _WRITERS.get(p.suffix.lower())
    if writer is None:
        raise DataError(
            f"{p}: unsupported output type '{p.suffix or '(none)'}'; "
            f"supported: {', '.join(WRITE_SUFFIXES)}"
        )
    with atomic_path(p) as tmp:
        return writer(tmp, records, p)


def _dump(record: object, path: Path, n: int, indent: int | None = None) -> str:
    try:
        return json.dumps(record, ensure_ascii=False, indent=indent)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: record {n}: cannot be written as JSON ({e})") from None


def _write_jsonl(tmp: Path, records: Iterable[dict], path: Path) -> int:
    count = 0
    with tmp.open("x", encoding="utf-8") as f:
        for count, record in enumerate(records, start=1):
            f.write(_dump(record, path, count) + "\n")
    return count


def _write_json(tmp: Path, records: Iterable[dict], path: Path) -> int:
    # Streams the array, byte for byte what json.dump(list, indent=2) writes: element lines are
    # indented once more (JSON strings hold no raw newlines, so replacing "\n" is safe).
    count = 0
    with tmp.open("x", encoding="utf-8") as f:
        for count, record in enumerate(records, start=1):
            f.write("[\n  " if count == 1 else ",\n  ")
            f.write(_dump(record, path, count, indent=2).replace("\n", "\n  "))
        f.write("\n]\n" if count else "[]\n")
    return count


def _columns(records: list, path: Path) -> list[str]:
    """Every key of every record, in order of first appearance (rows may differ)."""
    for n, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {n}: expected an object, got {type(record).__name__}")
    return list(dict.fromkeys(key for record in records for key in record))


def _csv_cell(value: object) -> str:
    # Nested values (history, conversations, messages...) become JSON text, which the reader
    # decodes back; None is an empty cell.
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _write_csv(tmp: Path, records: Iterable[dict], path: Path) -> int:
    rows = list(records)  # the header needs every row's keys
    header = _columns(rows, path)
    with tmp.open("x", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([_csv_cell(row.get(key)) for key in header])
    return len(rows)


def _write_parquet(tmp: Path, records: Iterable[dict], path: Path) -> int:
    import pyarrow as pa  # heavy import, only when parquet is written
    import pyarrow.parquet as pq

    rows = list(records)
    arrays = {}
    for key in _columns(rows, path):
        try:
            arrays[key] = pa.array([row.get(key) for row in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(f"{path}: column '{key}' cannot be stored in parquet: {e}") from None
    pq.write_table(pa.table(arrays), tmp)
    return len(rows)


_WRITERS = {
    ".jsonl": _write_jsonl,
    ".json": _write_json,
    ".csv": _write_csv,
    ".parquet": _write_parquet,
}


def convert_file(
    src: str | Path,
    dst: str | Path,
    to_fmt: str,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    on_error: str = "stop",
    reject: Callable[[RawRecord, str], None] | None = None,
) -> dict:
    """Read `src` (any format and file type), write it to `dst` as `to_fmt`.

    Stats: read == kept + rejected, plus the detected source format and the count written.
    """
    if to_fmt not in FORMATS:
        raise ValueError(f"unknown target format {to_fmt!r}; allowed: {', '.join(FORMATS)}")
    conversations, stats = load_conversations([src], fmt, columns, on_error, reject)
    records, unwritable = [], 0
    for c in conversations:
        try:
            records.append(to_record(c.messages, to_fmt, c.tools))
        except ValueError as e:  # a tool conversation has no alpaca form
            if on_error == "stop":
                raise DataError(f"{c.source}:{c.line}: {e}") from None
            unwritable += 1
            if reject is not None:
                reject(RawRecord(c.source, c.line, {"messages": c.messages}), str(e))
    written = write_records(dst, records)
    return {
        "read": stats["read"],
        "kept": stats["kept"] - unwritable,
        "rejected": stats["rejected"] + unwritable,
        "written": written,
        "from": stats["formats"][str(src)],
        "to": to_fmt,
    }


# --- splitting and balancing ------------------------------------------------------------


def label_of(record: dict | RawRecord) -> str | int:
    """The `label` of a classification record (a string or an integer; booleans count)."""
    if isinstance(record, RawRecord):
        data, where = record.data, f"{record.where}: "
    else:
        data, where = record, ""
    if not isinstance(data, dict) or "label" not in data:
        raise DataError(f"{where}record has no 'label' field")
    label = data["label"]
    if not isinstance(label, str | int):
        raise DataError(
            f"{where}field 'label' must be a string or an integer, got {type(label).__name__}"
        )
    if isinstance(label, str) and not label.strip():
        raise DataError(f"{where}field 'label' is empty")
    return label


def split_records(
    records: list,
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1),
    seed: int = 42,
    stratify_key: Callable[[dict], object] | None = None,
) -> list[list]:
    """Seeded split into len(ratios) parts; every record lands in exactly one.

    Sizes come from largest remainders (ties go to the earlier part). With `stratify_key`,
    each class is split on its own, so every part keeps the label proportions. Within a
    part, records keep their input order (the trainer shuffles; diffs stay readable).
    """
    _check_ratios(ratios)
    rng = random.Random(seed)
    key = stratify_key or (lambda _record: None)
    parts: list[list[int]] = [[] for _ in ratios]
    for indices in _group(records, key).values():
        rng.shuffle(indices)
        start = 0
        for part, size in zip(parts, _allocate(len(indices), ratios), strict=True):
            part.extend(indices[start : start + size])
            start += size
    return [[records[i] for i in sorted(part)] for part in parts]


def balance_records(
    records: list,
    key: Callable[[dict], object],
    strategy: str = "oversample",
    seed: int = 42,
    target: int | None = None,
) -> list:
    """Equalize class counts (by label, task type, ...); a new list, the input untouched.

    oversample: classes below the largest count (or `target`) get duplicates drawn with
    replacement, appended after the originals as deep copies. undersample: classes above the
    smallest count (or `target`) keep a random subset, in input order.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    if target is not None and target < 1:
        raise ValueError(f"target must be at least 1, got {target}")
    groups = _group(records, key)
    if not groups:
        return []
    rng = random.Random(seed)
    counts = [len(g) for g in groups.values()]
    if strategy == "undersample":
        goal = target or min(counts)
        kept = (rng.sample(g, goal) if len(g) > goal else g for g in groups.values())
        return [records[i] for i in sorted(i for group in kept for i in group)]
    goal = target or max(counts)
    added = [i for g in groups.values() if len(g) < goal for i in rng.choices(g, k=goal - len(g))]
    return list(records) + [copy.deepcopy(records[i]) for i in added]


def _group(records: Sequence, key: Callable[[dict], object]) -> dict[Hashable, list[int]]:
    """Record indices per class, classes in order of first appearance (deterministic)."""
    groups: dict[Hashable, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(key(record), []).append(i)
    return groups


def _check_ratios(ratios: Sequence[float]) -> None:
    if not ratios or any(not math.isfinite(r) or r < 0 for r in ratios):
        raise ValueError(f"ratios must be one or more non-negative numbers, got {list(ratios)}")
    total = math.fsum(ratios)
    if abs(total - 1) > 1e-6:
        shown = " + ".join(f"{r:g}" for r in ratios)
        raise ValueError(f"ratios must sum to 1, got {shown} = {total:g}")


def _allocate(n: int, ratios: Sequence[float]) -> list[int]:
    """Largest-remainder sizes for n items: they sum to n and each is within 1 of n * ratio."""
    exact = [round(n * r, 9) for r in ratios]  # 0.29 * 100 must count as 29, not 28.99...
    sizes = [math.floor(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda i: (sizes[i] - exact[i], i))
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes
