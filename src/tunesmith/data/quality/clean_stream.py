"""`data clean` at any size: records stream through in shards and never sit in memory together.

The configured steps are cut at the two dedup steps, which need every record before they can
decide. Each segment runs its per-record steps shard by shard (`clean_shard`, on this process,
N processes or Ray: engine.py) and, when a dedup step ends it, writes the surviving records to a
spill file and their dedup keys to a disk index (spill.py). The index then decides the
duplicates, and a pass over the spill file rejects them and feeds the next segment. The last
segment's records go straight into the output file (exact_dedup directly followed by near_dedup,
the default order, share one spill: near-dedup bands only the rows exact-dedup keeps, which
gives the groups it would find on those rows alone); rejects go to one file per step,
concatenated in step order at the end. Output, rejects, counts and metrics equal
`clean.clean_records` + `write_clean_output` (tests/test_data_scale.py); only step `seconds`
differ. Memory holds a few shards, one index partition and the duplicate groups found.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tunesmith.data.convert import to_record, write_records
from tunesmith.data.formats import FORMATS, check_columns
from tunesmith.data.quality.clean import (
    _RECORD_STEPS,
    CleanConfig,
    _active,
    _Context,
    _Item,
    _per_record,
    _stats_path,
    dedup_text,
    parse_items,
)
from tunesmith.data.quality.dedup import canonical_text, minhash_signatures
from tunesmith.data.quality.engine import DEFAULT_CHUNK, Executor, chunked
from tunesmith.data.quality.rules import score_record
from tunesmith.data.quality.spill import ExactIndex, NearIndex, text_digest
from tunesmith.data.quality.version import write_version_digest
from tunesmith.runs.folder import atomic_path, atomic_write
from tunesmith.utils.errors import ConfigError, DataError

SET_STEPS = ("exact_dedup", "near_dedup")
NUM_PERM, SEED = 128, 1  # dedup.near_duplicate_groups' defaults: the same signatures
_REASON_KEYS = 10_000  # distinct reasons counted for the console summary (the rest are not)


@dataclass
class ShardJob:
    """What a shard needs besides its records; the same for every shard of a segment."""

    cfg: CleanConfig
    words: list[str]
    steps: list[str]  # per-record steps of this segment, in order
    # the dedup step(s) that end the segment (exact_dedup right before near_dedup share one
    # pass); () : the output follows
    barrier: tuple[str, ...]
    out_fmt: str = "alpaca"


@dataclass
class ShardResult:
    kept: list[_Item]
    rejects: dict[str, list[dict]]
    stats: dict[str, dict]  # step -> in, kept, rejected, modified, seconds
    counts: dict[str, Counter]
    keys: dict = field(default_factory=dict)  # exact_dedup: digests; near_dedup: signatures
    records: list[dict] = field(default_factory=list)  # the output records (last segment)
    hash_lines: bytes = b""  # their canonical JSON lines (version.dataset_hash)
    scores: list[float] = field(default_factory=list)


def clean_shard(task: tuple[ShardJob, list[_Item]]) -> ShardResult:
    """One shard through one segment: its per-record steps, then its dedup keys (or, in the
    last segment, the output records). Top-level and picklable: every engine runs this."""
    job, items = task
    ctx = _Context(job.cfg, job.words)
    rejects: dict[str, list[dict]] = {}
    stats: dict[str, dict] = {}
    for step in job.steps:
        start = time.perf_counter()
        kept, rejected, modified = _per_record(_RECORD_STEPS[step], items, ctx)
        rejects[step] = [
            {
                "source": item.conv.source,
                "line": item.conv.line,
                "step": step,
                "reason": reason,
                "record": item.raw,
            }
            for item, reason in rejected
        ]
        stats[step] = {
            "in": len(items),
            "kept": len(kept),
            "rejected": len(rejected),
            "modified": modified,
            "seconds": time.perf_counter() - start,
        }
        items = kept
    result = ShardResult(items, rejects, stats, ctx.counts)
    if not job.barrier:
        _finish(job, items, result)
        return result
    texts = [dedup_text(item.conv.messages) for item in items]
    for step in job.barrier:
        start = time.perf_counter()
        if step == "exact_dedup":
            result.keys[step] = [text_digest(t) for t in texts]
        else:
            canonical = [canonical_text(t) for t in texts]
            result.keys[step] = minhash_signatures(canonical, job.cfg.ngram, NUM_PERM, SEED)
        result.stats[step] = {"seconds": time.perf_counter() - start}
    return result


def _finish(job: ShardJob, items: list[_Item], result: ShardResult) -> None:
    rules = job.cfg.rules
    result.scores = [
        item.score if item.score is not None else score_record(item.conv.messages, rules).score
        for item in items
    ]
    result.records = [
        to_record(i.conv.messages, job.out_fmt, getattr(i.conv, "tools", None)) for i in items
    ]
    result.hash_lines = b"".join(
        json.dumps(
            r, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
        ).encode("utf-8")
        + b"\n"
        for r in result.records
    )


def clean_files(
    paths: Iterable[str | Path],
    cfg: CleanConfig,
    out: str | Path,
    rejects_path: str | Path | None = None,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    *,
    num_proc: int = 1,
    engine: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    work_dir: str | Path | None = None,
) -> dict:
    """Clean the files into `out` (+ rejects, stats and version files) without holding the
    records in memory. Returns the summary that `<out>.stats.json` holds, plus
    "top_reasons" [(reason, count)] for a console. `num_proc` > 1 runs the shards on that many
    processes (engine "processes", or "ray"); the files written do not depend on it.
    `work_dir` holds the temporary spill files (default: the system's temporary folder)."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: auto, {', '.join(FORMATS)}")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    paths = [str(p) for p in paths]
    out = Path(out)
    target = os.path.normcase(os.path.abspath(out))
    for path in paths:
        if os.path.normcase(os.path.abspath(path)) == target:
            raise DataError(f"{out}: the output would overwrite an input file; choose another path")
    run = _Run(paths, cfg, fmt, check_columns(columns), chunk_size)
    rejects = Path(rejects_path) if rejects_path else out.parent / "rejects.jsonl"
    with (
        Executor(num_proc, engine) as executor,
        tempfile.TemporaryDirectory(prefix="tunesmith-clean-", dir=work_dir) as tmp,
    ):
        run.tmp, run.executor = Path(tmp), executor
        write_records(out, run.records())
        run.write_rejects(rejects)
    metrics = run.metrics()
    meta = write_version_digest(
        out,
        run.digest.hexdigest(),
        run.kept,
        "clean",
        cfg.model_dump(mode="json"),
        [Path(p) for p in paths],
        {k: v for k, v in metrics.items() if k != "rejected_by_step"},
    )
    summary = {
        "output": str(out),
        "format": run.out_fmt(),
        "rejects_path": str(rejects),
        "stats_path": str(_stats_path(out)),
        "version_path": str(meta),
        "inputs": run.formats,
        "read": run.read,
        "kept": run.kept,
        "rejected": run.rejected,
        "steps": run.step_stats(),
        "metrics": metrics,
    }
    atomic_write(_stats_path(out), json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    return {**summary, "top_reasons": run.top_reasons()}


class _Run:
    def __init__(self, paths: list[str], cfg: CleanConfig, fmt: str, columns: dict, size: int):
        self.paths, self.cfg, self.fmt, self.columns, self.size = paths, cfg, fmt, columns, size
        self.words = cfg.word_list()
        self.ctx = _Context(cfg, self.words)  # parse rejects and counts
        self.active = [s for s in cfg.steps if _active(s, self.ctx)]
        self.formats: dict[str, str | None] = {}
        self.read = self.kept = self.rejected = 0
        self.stats: dict[str, dict] = {}
        self.counts: dict[str, Counter] = {}
        self.reasons: dict[str, Counter] = {}  # per step, merged in step order at the end
        self.reason_keys = 0
        self.reject_files: dict[str, object] = {}
        self.score_sum, self.scores = 0.0, 0
        self.digest = hashlib.sha256()
        self.tmp: Path = Path()
        self.executor: Executor | None = None

    # --- the pipeline ---------------------------------------------------------------------

    def records(self) -> Iterator[dict]:
        """The output records, produced by running every segment (write_records drives it)."""
        source = self._parsed()
        segments = self._segments()
        for number, (steps, barrier) in enumerate(segments):
            job = ShardJob(self.cfg, self.words, steps, barrier)
            tasks = ((replace(job, out_fmt=self.out_fmt()), chunk) for chunk in source)
            results = self.executor.map_ordered(clean_shard, tasks)
            if not barrier:
                for result in results:
                    self._merge(result)
                    self.digest.update(result.hash_lines)
                    self.kept += len(result.records)
                    for score in result.scores:
                        self.score_sum += score
                    self.scores += len(result.scores)
                    yield from result.records
            else:
                source = self._dedup(number, barrier, results)
        self._check_formats()

    def _segments(self) -> list[tuple[list[str], tuple[str, ...]]]:
        """(per-record steps, the dedup steps that end them); exact_dedup directly followed by
        near_dedup is one barrier: near-dedup then bands only the rows exact_dedup keeps, which
        gives the groups it would find on those rows alone, and the records spill once."""
        segments: list = []
        steps: list[str] = []
        for step in self.active:
            if step not in SET_STEPS:
                steps.append(step)
            elif (
                step == "near_dedup"
                and not steps
                and segments
                and segments[-1][1] == ("exact_dedup",)
            ):
                segments[-1] = (segments[-1][0], ("exact_dedup", "near_dedup"))
            else:
                segments.append((steps, (step,)))
                steps = []
        segments.append((steps, ()))
        return segments

    def _parsed(self) -> Iterator[list[_Item]]:
        def items() -> Iterator[_Item]:
            for path in self.paths:
                info: dict = {}
                self.formats[path] = None if self.fmt == "auto" else self.fmt
                for item in parse_items(path, self.fmt, self.columns, self.ctx, info):
                    self.formats[path] = info["format"]
                    yield item
                self.formats[path] = info["format"]
                self.read += info["read"]

        kept, seconds, shards = 0, 0.0, chunked(items(), self.size)
        while True:
            start = time.perf_counter()  # reading only: the steps run between the yields
            chunk = next(shards, None)
            seconds += time.perf_counter() - start
            self._drain_parse()
            if chunk is None:
                break
            kept += len(chunk)
            yield chunk
        stripped = self.ctx.counts.get("parse", Counter())["nul stripped"]
        self.stats["parse"] = {
            "in": self.read,
            "kept": kept,
            "rejected": self.read - kept,
            "modified": stripped,
            "seconds": seconds,
        }

    def _drain_parse(self) -> None:
        self._write_rejects_of("parse", self.ctx.rejects)
        self.ctx.rejects.clear()

    def _merge(self, result: ShardResult) -> None:
        for step, stat in result.stats.items():
            total = self.stats.setdefault(step, dict.fromkeys(("in", "kept", "rejected"), 0))
            for key, value in stat.items():
                total[key] = total.get(key, 0) + value
        for step, counts in result.counts.items():
            self.counts.setdefault(step, Counter()).update(counts)
        for step, rejects in result.rejects.items():
            self._write_rejects_of(step, rejects)

    def _dedup(self, number: int, steps: tuple[str, ...], results: Iterator[ShardResult]):
        """Spill a segment's survivors with their keys, decide the duplicates, then stream the
        survivors back with the duplicates rejected."""
        folder = self.tmp / f"index{number}"
        folder.mkdir()
        spill = folder / "records.pkl"
        exact = ExactIndex(folder) if "exact_dedup" in steps else None
        signatures = folder / "signatures.bin"
        with spill.open("wb") as f, signatures.open("wb") as sigs:
            for result in results:
                self._merge(result)
                if result.kept:
                    pickle.dump(result.kept, f, protocol=pickle.HIGHEST_PROTOCOL)
                    if exact is not None:
                        exact.add(result.keys["exact_dedup"])
                    if "near_dedup" in steps:
                        sigs.write(np.ascontiguousarray(result.keys["near_dedup"]).tobytes())
        return self._apply(steps, folder, exact)

    def _apply(self, steps: tuple[str, ...], folder: Path, exact: ExactIndex | None):
        decisions = []  # (step, dropped indices ascending, the index each one repeats, reason)
        skip = np.zeros(0, np.int64)
        if exact is not None:
            start = time.perf_counter()
            skip, firsts = exact.duplicates()
            decisions.append(("exact_dedup", skip, firsts, "exact duplicate of {}"))
            self._add_seconds("exact_dedup", start)
        if "near_dedup" in steps:
            start = time.perf_counter()
            threshold = self.cfg.near_dup_threshold
            index = NearIndex(folder / "near", threshold, NUM_PERM, folder / "signatures.bin")
            index.index_file(skip)  # only the rows exact_dedup keeps
            dups, firsts = _pairs_of(index.groups())
            reason = f"near-duplicate of {{}} (similarity ≥ {threshold:g})"
            decisions.append(("near_dedup", dups, firsts, reason))
            self._add_seconds("near_dedup", start)
        yield from self._rejecting(folder, decisions)
        shutil.rmtree(folder, ignore_errors=True)

    def _add_seconds(self, step: str, start: float) -> None:
        stat = self.stats.setdefault(step, dict.fromkeys(("in", "kept", "rejected"), 0))
        stat["seconds"] = stat.get("seconds", 0.0) + time.perf_counter() - start

    def _rejecting(self, folder: Path, decisions: list) -> Iterator[list[_Item]]:
        """The spilled records in order, each step's duplicates rejected naming the record they
        repeat (always an earlier one, so its place is known by then)."""
        start = time.perf_counter()
        needed = {first for _, _, firsts, _ in decisions for first in firsts.tolist()}
        where: dict[int, str] = {}
        plans = [
            (step, dups.tolist(), firsts.tolist(), why) for step, dups, firsts, why in decisions
        ]
        positions = [0] * len(plans)
        n_in = {step: 0 for step, *_ in plans}
        idx = 0
        with (folder / "records.pkl").open("rb") as f:
            while True:
                try:
                    chunk = pickle.load(f)
                except EOFError:
                    break
                survivors, rejected = [], {step: [] for step, *_ in plans}
                for item in chunk:
                    dropped = False
                    for k, (step, dups, firsts, why) in enumerate(plans):
                        n_in[step] += 1
                        pos = positions[k]
                        if pos < len(dups) and dups[pos] == idx:
                            rejected[step].append(
                                {
                                    "source": item.conv.source,
                                    "line": item.conv.line,
                                    "step": step,
                                    "reason": why.format(where[firsts[pos]]),
                                    "record": item.raw,
                                }
                            )
                            positions[k] += 1
                            dropped = True
                            break
                    if not dropped:
                        survivors.append(item)
                    if idx in needed:
                        where[idx] = item.where
                    idx += 1
                for step, rejects in rejected.items():
                    self._write_rejects_of(step, rejects)
                    self.stats[step]["rejected"] += len(rejects)
                if survivors:
                    yield survivors
        for step, *_ in plans:
            stat = self.stats[step]
            stat["in"], stat["kept"], stat["modified"] = (
                n_in[step],
                n_in[step] - stat["rejected"],
                0,
            )
        self._add_seconds(plans[-1][0], start)

    # --- outputs --------------------------------------------------------------------------

    def out_fmt(self) -> str:
        if self.cfg.output_format != "same":
            return self.cfg.output_format
        return next((f for f in self.formats.values() if f), "alpaca")

    def _check_formats(self) -> None:
        found = {path: f for path, f in self.formats.items() if f}
        if self.cfg.output_format == "same" and len(set(found.values())) > 1:
            listed = ", ".join(f"{path}: {f}" for path, f in found.items())
            raise ConfigError(
                f"output_format: 'same' is ambiguous, the inputs differ ({listed}); "
                f"set output_format to one of {', '.join(FORMATS)}"
            )

    def _write_rejects_of(self, step: str, rejects: list[dict]) -> None:
        if not rejects:
            return
        f = self.reject_files.get(step)
        if f is None:
            f = self.reject_files[step] = (self.tmp / f"rejects-{step}.jsonl").open("wb")
        f.write(
            b"".join(
                (json.dumps(r, ensure_ascii=False, default=str) + "\n").encode("utf-8")
                for r in rejects
            )
        )
        self.rejected += len(rejects)
        reasons = self.reasons.setdefault(step, Counter())
        for r in rejects:
            key = f"{r['step']}: {r['reason']}"
            if key in reasons or self.reason_keys < _REASON_KEYS:
                self.reason_keys += key not in reasons
                reasons[key] += 1

    def top_reasons(self, n: int = 3) -> list[tuple[str, int]]:
        merged: Counter = Counter()
        for step in ["parse", *self.active]:
            merged.update(self.reasons.get(step, {}))
        return merged.most_common(n)

    def write_rejects(self, path: Path) -> None:
        """One file: the parse rejects, then each step's in step order (as clean_records)."""
        with atomic_path(path) as tmp, tmp.open("xb") as out:
            for step in ["parse", *self.active]:
                f = self.reject_files.get(step)
                if f is not None:
                    f.close()
                    with open(f.name, "rb") as part:
                        shutil.copyfileobj(part, out, 1 << 20)

    def step_stats(self) -> list[dict]:
        rows = []
        for step in ["parse", *self.active]:
            stat = self.stats.get(step, {})
            n_in = stat.get("in", 0)
            row = {
                "step": step,
                "in": n_in,
                "kept": stat.get("kept", n_in),
                "rejected": stat.get("rejected", 0),
                "modified": stat.get("modified", 0),
                "seconds": round(stat.get("seconds", 0.0), 4),
            }
            if self.counts.get(step):
                row["hits" if step != "language" else "detected"] = dict(self.counts[step])
            rows.append(row)
        # a step no shard reached (everything rejected before it) saw no records
        for before, row in itertools.pairwise(rows):
            if row["step"] not in self.stats:
                row["in"] = row["kept"] = before["kept"]
        return rows

    def metrics(self) -> dict:
        by_step = {row["step"]: row["rejected"] for row in self.step_stats() if row["rejected"]}
        pii = dict(self.counts.get("pii", {}))
        return {
            "read": self.read,
            "kept": self.kept,
            "rejected": self.rejected,
            "pass_rate": round(self.kept / self.read, 6) if self.read else 0.0,
            "mean_score": round(self.score_sum / self.scores, 4) if self.scores else None,
            "exact_duplicates": by_step.get("exact_dedup", 0),
            "near_duplicates": by_step.get("near_dedup", 0),
            "pii_hits": sum(pii.values()),
            "pii_hits_by_kind": pii,
            "rejected_by_step": by_step,
        }


def _pairs_of(groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(dropped indices ascending, the first index of each one's group)."""
    dups = [(i, group[0]) for group in groups for i in group[1:]]
    dups.sort()
    if not dups:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    arr = np.asarray(dups, dtype=np.int64)
    return arr[:, 0], arr[:, 1]
