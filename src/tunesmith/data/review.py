"""Human review of a dataset: a stratified sample out, the reviewer's decisions back in.

Seed 004 §3.5.5 (`human_review_pipeline`): review a stratified share of the records, accept,
modify or reject each one, and count the decisions. Here the review is a file, so the same
functions serve the CLI (`tunesmith data review`) and any interface built on them:

1. `write_review_file` (over `review_sample`) writes one JSON line per sampled record.
2. A person fills in each line's `decision` (by hand, or through an interface that calls
   `check_entry` on what it is given).
3. `apply_review` writes the reviewed dataset as a new version with lineage, and a rejects file.

The review file (JSONL), one line per sampled record:

    {"decision": "",          accept | edit | reject; empty or missing = undecided
     "reason": "",            why: required for reject, kept in the rejects file
     "edited": null,          decision edit: the whole new record (a JSON object)
     "record": {...},         the record as sampled: leave it unchanged
     "stratum": {...},        the stratum it was drawn from (category, source, length bucket)
     "source": "data.jsonl", "line": 12, "index": 11,
     "hash": "...",           content hash of "record" (data/quality/version.dataset_hash)
     "dataset_hash": "..."}   content hash of the whole source when sampled

`apply_review` refuses a review file that does not belong to the source: a sampled record whose
content changed (in the source, or in the review file's "record"), or a source that changed
anywhere else since sampling.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.convert import write_records
from tunesmith.data.quality.version import dataset_hash, write_version
from tunesmith.data.readers import RawRecord, read_records
from tunesmith.runs.folder import atomic_write
from tunesmith.utils.errors import DataError, TunesmithError

DECISIONS = ("accept", "edit", "reject")
DEFAULT_STRATA = ("category", "source", "length")
LENGTH_BUCKETS = 4  # quartiles of a record's text length
ENTRY_KEYS = frozenset(
    {"decision", "reason", "edited", "record", "stratum", "source", "line", "index", "hash"}
    | {"dataset_hash"}
)


# --- sampling -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampled:
    index: int  # position of the record in the list sampled from
    stratum: dict  # {stratum name: value}; only the strata in use


def review_sample(
    records: Sequence[dict],
    fraction: float = 0.1,
    strata: Sequence[str] = DEFAULT_STRATA,
    seed: int = 42,
) -> list[Sampled]:
    """A seeded stratified sample of `fraction` of the records, in record order.

    Each stratum gets its share of round(fraction * len(records)) by largest remainders, and
    at least one record, so small strata are seen too (the sample may then exceed the
    fraction). "length" buckets the records by text length (quartiles); any other name is a
    record field (category, source, label, ...), ignored when no record has it.
    """
    if not 0 < fraction <= 1:
        raise TunesmithError(f"review fraction must be above 0 and at most 1, got {fraction}")
    keys = stratum_values(records, strata)
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(tuple(key.items()), []).append(i)
    sizes = _allocate([len(g) for g in groups.values()], fraction)
    rng = random.Random(seed)
    chosen = [i for g, k in zip(groups.values(), sizes, strict=True) for i in rng.sample(g, k)]
    return [Sampled(i, keys[i]) for i in sorted(chosen)]


def stratum_values(records: Sequence[dict], strata: Sequence[str]) -> list[dict]:
    """Each record's stratum: {name: value} for the strata some record has."""
    unknown = [s for s in strata if not isinstance(s, str) or not s.strip()]
    if unknown:
        raise TunesmithError(f"strata must be field names or 'length', got {list(strata)}")
    used = [s for s in strata if s == "length" or any(s in r for r in records)]
    lengths = _length_labels(records) if "length" in used else []
    return [
        {s: lengths[i] if s == "length" else _field_value(r, s) for s in used}
        for i, r in enumerate(records)
    ]


def _field_value(record: dict, name: str) -> object:
    value = record.get(name)
    # Lists and objects cannot key a stratum; their JSON text can.
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def _length_labels(records: Sequence[dict]) -> list[str]:
    """Each record's length bucket, named by its range of characters ("120-340 chars")."""
    lengths = [text_length(r) for r in records]
    ordered = sorted(lengths)
    n = len(ordered)
    cuts = sorted({ordered[n * k // LENGTH_BUCKETS] for k in range(1, LENGTH_BUCKETS)}) if n else []
    buckets = [bisect.bisect_right(cuts, length) for length in lengths]
    ranges: dict[int, list[int]] = {}
    for bucket, length in zip(buckets, lengths, strict=True):
        ranges.setdefault(bucket, []).append(length)
    names = {b: f"{min(v)}-{max(v)} chars" for b, v in ranges.items()}
    return [names[b] for b in buckets]


def text_length(value: object) -> int:
    """Characters of every string in a record (any format: alpaca fields, chat turns, text)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_length(v) for v in value.values())
    if isinstance(value, list):
        return sum(text_length(v) for v in value)
    return 0


def _allocate(sizes: list[int], fraction: float) -> list[int]:
    """Per-stratum sample sizes: largest remainders of fraction * size, at least 1 each."""
    exact = [round(size * fraction, 9) for size in sizes]  # 0.1 * 30 must count as 3
    counts = [math.floor(x) for x in exact]
    target = math.floor(round(math.fsum(exact), 9) + 0.5)
    order = sorted(range(len(sizes)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: max(0, target - sum(counts))]:
        counts[i] += 1
    return [min(size, max(1, c)) for size, c in zip(sizes, counts, strict=True)]


# --- the review file ----------------------------------------------------------------------


def record_hash(record: dict) -> str:
    return dataset_hash([record])


def review_entries(
    source: str | Path,
    fraction: float = 0.1,
    strata: Sequence[str] = DEFAULT_STRATA,
    seed: int = 42,
) -> list[dict]:
    """The review file's lines for a sample of the source, each undecided."""
    raw = list(read_records(source))
    if not raw:
        raise DataError(f"{source}: no records to review (an empty file?)")
    records = [r.data for r in raw]
    whole = dataset_hash(records)
    return [_entry(raw[s.index], s, whole) for s in review_sample(records, fraction, strata, seed)]


def _entry(raw: RawRecord, sampled: Sampled, whole: str) -> dict:
    return {
        "decision": "",
        "reason": "",
        "edited": None,
        "record": raw.data,
        "stratum": sampled.stratum,
        "source": raw.source,
        "line": raw.line,
        "index": sampled.index,
        "hash": record_hash(raw.data),
        "dataset_hash": whole,
    }


def write_review_file(
    source: str | Path,
    out: str | Path,
    fraction: float = 0.1,
    strata: Sequence[str] = DEFAULT_STRATA,
    seed: int = 42,
) -> dict:
    """Write the review file for a sample of source; returns counts for the console."""
    out = Path(out)
    _refuse_same_file(out, source, "the source")
    _refuse_losing_decisions(out)
    entries = review_entries(source, fraction, strata, seed)
    atomic_write(out, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    return {
        "output": str(out),
        "sampled": len(entries),
        "strata": len({json.dumps(e["stratum"], sort_keys=True) for e in entries}),
    }


def _refuse_losing_decisions(out: Path) -> None:
    # Sampling again over a filled-in review file would throw a person's work away.
    if not out.is_file():
        return
    try:
        decided = sum(1 for r in read_records(out) if r.data.get("decision"))
    except DataError:
        decided = 0
    if decided:
        raise DataError(
            f"{out}: already holds {decided} review decisions; choose another --out "
            "or delete the file first"
        )


def _refuse_same_file(path: str | Path, other: str | Path, what: str) -> None:
    if os.path.normcase(os.path.abspath(path)) == os.path.normcase(os.path.abspath(other)):
        raise DataError(f"{path}: the output would overwrite {what}; choose another path")


# --- decisions ----------------------------------------------------------------------------


def check_entry(entry: object, where: str) -> dict:
    """One review line, checked: its decision, reason and edit are usable.

    `where` ("review.jsonl:3") starts every error. Returns the entry with `decision`
    normalized ("" for undecided).
    """
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a JSON object (a review line), got {entry!r:.60}")
    extra = sorted(set(entry) - ENTRY_KEYS)
    if extra:
        raise DataError(
            f"{where}: unknown key(s) {extra}; a review line has {', '.join(sorted(ENTRY_KEYS))}"
        )
    _check_origin(entry, where)
    decision = entry.get("decision") or ""
    if decision not in ("", *DECISIONS):
        raise DataError(
            f"{where}: decision {decision!r} is not one of {', '.join(DECISIONS)} "
            "(or empty for undecided)"
        )
    _check_decision(entry, decision, where)
    return {**entry, "decision": decision}


def _check_origin(entry: dict, where: str) -> None:
    for key, kind in (("index", int), ("hash", str), ("record", dict)):
        if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
            raise DataError(
                f"{where}: '{key}' is missing or not {kind.__name__} (a line written by "
                "`tunesmith data review --sample` has it)"
            )
    if record_hash(entry["record"]) != entry["hash"]:
        raise DataError(
            f"{where}: 'record' was changed since sampling; leave it as it is and put the "
            "new record in 'edited' with decision 'edit'"
        )


def _check_decision(entry: dict, decision: str, where: str) -> None:
    reason, edited = entry.get("reason") or "", entry.get("edited")
    if not isinstance(reason, str):
        raise DataError(f"{where}: 'reason' must be text, got {type(reason).__name__}")
    if decision == "reject" and not reason.strip():
        raise DataError(f"{where}: decision 'reject' needs a 'reason' (why it is rejected)")
    if decision == "edit" and (not isinstance(edited, dict) or not edited):
        raise DataError(
            f"{where}: decision 'edit' needs 'edited': the whole new record as a JSON object"
        )
    if decision != "edit" and edited is not None:
        raise DataError(
            f"{where}: 'edited' is given but the decision is {decision or 'empty'!r}; "
            "set decision to 'edit' to use it, or remove 'edited'"
        )


def read_review_file(path: str | Path) -> list[tuple[str, dict]]:
    """Every line of a review file, checked, with where it is ("review.jsonl:3")."""
    entries = [(r.where, check_entry(r.data, r.where)) for r in read_records(path)]
    seen: dict[int, str] = {}
    for where, entry in entries:
        if entry["index"] in seen:
            raise DataError(
                f"{where}: record {entry['index']} is reviewed twice (also {seen[entry['index']]})"
            )
        seen[entry["index"]] = where
    return entries


# --- applying -----------------------------------------------------------------------------


@dataclass
class ReviewResult:
    kept: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)  # clean's shape: source, line, step, ...
    counts: Counter = field(default_factory=Counter)  # accepted, modified, rejected, undecided

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted unchanged, of the records decided (None when none was)."""
        decided = sum(self.counts[k] for k in ("accepted", "modified", "rejected"))
        return round(self.counts["accepted"] / decided, 4) if decided else None


def apply_decisions(raw: list[RawRecord], entries: list[tuple[str, dict]]) -> ReviewResult:
    """Apply checked review lines to the source's records: every record kept or rejected."""
    _check_belongs(raw, entries)
    by_index = {entry["index"]: entry for _, entry in entries}
    result = ReviewResult()
    for i, record in enumerate(raw):
        entry = by_index.get(i)
        _apply_one(record, entry, result)
    return result


def _apply_one(raw: RawRecord, entry: dict | None, result: ReviewResult) -> None:
    decision = entry["decision"] if entry else None
    if decision == "reject":
        result.counts["rejected"] += 1
        result.rejects.append(
            {
                "source": raw.source,
                "line": raw.line,
                "step": "review",
                "reason": entry["reason"],
                "record": raw.data,
            }
        )
        return
    if decision == "edit" and entry["edited"] != raw.data:
        result.counts["modified"] += 1
        result.kept.append(entry["edited"])
        return
    # An edit that changes nothing is an accept; records outside the sample are kept as read.
    key = {"accept": "accepted", "edit": "accepted", "": "undecided"}.get(decision, "unsampled")
    result.counts[key] += 1
    result.kept.append(raw.data)


def _check_belongs(raw: list[RawRecord], entries: list[tuple[str, dict]]) -> None:
    source = raw[0].source if raw else "the source"
    for where, entry in entries:
        i = entry["index"]
        if i >= len(raw) or i < 0:
            raise DataError(
                f"{where}: record index {i} is past the end of {source} ({len(raw)} records); "
                "the review file was made from another file"
            )
        if record_hash(raw[i].data) != entry["hash"]:
            raise DataError(
                f"{where}: {raw[i].where} (record {i}) changed since sampling, or the review "
                f"file was made from another file; sample {source} again"
            )
    whole = dataset_hash(r.data for r in raw)
    recorded = {entry.get("dataset_hash") for _, entry in entries} - {None}
    if recorded and recorded != {whole}:
        raise DataError(
            f"{source}: changed since the review file was sampled (records outside the sample "
            "were added, removed or changed); sample it again"
        )


def apply_review(source_file: str | Path, review_file: str | Path, out_file: str | Path) -> dict:
    """Write the reviewed dataset (a new version of the source) and its rejects file.

    Accepted, undecided and unsampled records are kept as read, edits replace their record,
    rejects go to `<out stem>.rejects.jsonl` with their reason. `<out>.meta.json` names the
    source and the review file as parents, with the counts as metrics. Returns the summary.
    """
    out = Path(out_file)
    _refuse_same_file(out, source_file, "the source")
    _refuse_same_file(out, review_file, "the review file")
    entries = read_review_file(review_file)
    raw = list(read_records(source_file))
    result = apply_decisions(raw, entries)
    write_records(out, result.kept)
    rejects = out.with_name(f"{out.stem}.rejects.jsonl")
    atomic_write(rejects, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rejects))
    summary = _summary(raw, result, out, rejects)
    metrics = {k: v for k, v in summary.items() if not k.endswith("path") and k != "output"}
    params = {"review_file": str(review_file), "reviewed": summary["reviewed"]}
    parents = [Path(source_file), Path(review_file)]
    version = write_version(out, result.kept, "review", params, parents, metrics)
    return {**summary, "version_path": str(version)}


def _summary(raw: list, result: ReviewResult, out: Path, rejects: Path) -> dict:
    counts = result.counts
    return {
        "output": str(out),
        "rejects_path": str(rejects),
        "read": len(raw),
        "kept": len(result.kept),
        "rejected": len(result.rejects),
        "reviewed": len(raw) - counts["unsampled"],
        "accepted": counts["accepted"],
        "modified": counts["modified"],
        "undecided": counts["undecided"],
        "acceptance_rate": result.acceptance_rate,
    }
