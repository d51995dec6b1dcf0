"""`tunesmith data inspect` as a library: read data files once and report what a data team checks.

`inspect_data` returns the report as a JSON-able dict; `write_inspect_report` writes it as
inspect.json and as inspect.html with the plots drawn from the very same numbers. Records stream
through in shards (`inspect_shard`, on this process, N processes or Ray: engine.py) and memory
does not grow with their number: every distribution is an exact value -> count counter (so a
float measure such as the special-character ratio costs one entry per distinct value), the
examples are capped, exact and near duplicates are found by the on-disk indexes of spill.py, and
the cluster examples are read back from a temporary file. Time is linear in the records. A
malformed record is counted and shown with its file:line, never fatal; only a missing or
unsupported file stops the run.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jinja2 import TemplateError as JinjaError

from tunesmith.data.formats import (
    FORMATS,
    RecordError,
    check_columns,
    detect_format,
    to_conversation,
)
from tunesmith.data.multimodal import PLACEHOLDER, has_images, image_report
from tunesmith.data.quality.dedup import canonical_text, minhash_signatures
from tunesmith.data.quality.engine import DEFAULT_CHUNK, Executor, chunked
from tunesmith.data.quality.rules import (
    QualityRules,
    RecordScore,
    issue_message,
    score_record,
    score_text,
)
from tunesmith.data.quality.spill import ExactIndex, NearIndex, text_digest
from tunesmith.data.quality.text import detect_language
from tunesmith.data.readers import BadRecord, RawRecord, scan_records
from tunesmith.data.render import TemplateError, assistant_spans, tokenize_conversation
from tunesmith.runs.folder import atomic_write
from tunesmith.utils.errors import DataError
from tunesmith.utils.html import esc, facts_list, png_img, table

INSPECT_FORMATS = ("auto", *FORMATS, "text")  # text: {"text": ..., "label"?: ...} records
MALFORMED_EXAMPLES = 20
CLUSTER_EXAMPLES = 5
PII_EXAMPLES = 20
EXAMPLE_CHARS = 200
MAX_FIELDS = 100  # field completeness is reported for this many keys at most
HIST_BINS = 30
Progress = Callable[[str, list], Iterable]


@dataclass
class _Item:
    """One usable record."""

    where: str
    messages: list[dict] | None  # None for a plain-text record
    text: str  # user and assistant contents: the key for duplicates and language
    prompt: str
    response: str
    label: str | None = None


@dataclass
class _Scan:
    """What reading the files found; bounded: malformed examples are capped, the rest counts."""

    malformed: list[dict] = field(default_factory=list)  # {"where", "reason"}, the first ones
    malformed_count: int = 0
    files: list[dict] = field(default_factory=list)
    # per file: key -> [non-empty, empty], and how many records were JSON objects (the base)
    fields: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    parsed: Counter = field(default_factory=Counter)
    text_column: str = "text"  # where plain-text (pre-training) records keep their text
    images: bool = False  # a record may hold images: the images section reads the files again

    def bad(self, entry: dict) -> None:
        self.malformed_count += 1
        if len(self.malformed) < MALFORMED_EXAMPLES:
            self.malformed.append(entry)


@dataclass
class _Partial:
    """What one shard of records adds to the report: counters only, so shards merge exactly
    (value -> count for every distribution) and memory does not grow with the record count."""

    prompt_chars: Counter = field(default_factory=Counter)
    response_chars: Counter = field(default_factory=Counter)
    scores: Counter = field(default_factory=Counter)
    passed: int = 0
    issues: Counter = field(default_factory=Counter)
    special: Counter = field(default_factory=Counter)
    special_over: int = 0
    runs: Counter = field(default_factory=Counter)
    over_run: int = 0
    over_share: int = 0
    control_records: int = 0
    control_chars: int = 0
    pii_records: int = 0
    pii_kinds: Counter = field(default_factory=Counter)
    pii_examples: list = field(default_factory=list)
    nul: int = 0
    nul_examples: list = field(default_factory=list)
    languages: Counter = field(default_factory=Counter)
    chats: int = 0
    turns: Counter = field(default_factory=Counter)
    system: int = 0
    labels: Counter = field(default_factory=Counter)
    unlabelled: int = 0
    examples: list = field(default_factory=list)  # (where, clipped text) per record
    digests: list = field(default_factory=list)  # content_hash digests (exact duplicates)
    signatures: object = None  # MinHash signatures (near duplicates)

    def merge(self, other: _Partial) -> None:
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if isinstance(mine, Counter):
                mine.update(value)
            elif name == "pii_examples":
                mine.extend(value[: PII_EXAMPLES - len(mine)])
            elif name == "nul_examples":
                mine.extend(value[: MALFORMED_EXAMPLES - len(mine)])
            elif isinstance(mine, int):
                setattr(self, name, mine + value)


def inspect_shard(task: tuple[QualityRules, list[_Item]]) -> _Partial:
    """Score and measure one shard of records. Top-level and picklable: every engine
    (engine.py: this process, N processes, Ray) runs this."""
    rules, items = task
    p = _Partial()
    for item in items:
        score = _score(item, rules)
        st = score.stats
        p.scores[score.score] += 1
        p.passed += score.passed
        p.issues.update(score.issues)
        p.special[st.special_ratio] += 1
        p.special_over += st.special_ratio > rules.max_special_ratio
        p.runs[st.longest_run] += 1
        p.over_run += st.longest_run > rules.max_repeat_run
        p.over_share += st.char_share > rules.max_char_share
        p.control_records += st.control_chars > 0
        p.control_chars += st.control_chars
        if st.pii:
            kinds = Counter(hit.kind for hit in st.pii)
            p.pii_records += 1
            p.pii_kinds.update(kinds)
            if len(p.pii_examples) < PII_EXAMPLES:  # where and kind only: reports get shared
                p.pii_examples.append({"where": item.where, "kinds": dict(kinds)})
        if _has_nul(item):
            p.nul += 1
            if len(p.nul_examples) < MALFORMED_EXAMPLES:
                p.nul_examples.append(item.where)
        p.languages[detect_language(item.text)] += 1
        if item.messages is not None:
            p.prompt_chars[len(item.prompt)] += 1
            p.chats += 1
            p.turns[sum(m["role"] == "assistant" for m in item.messages)] += 1
            p.system += item.messages[0]["role"] == "system"
        p.response_chars[len(item.response)] += 1
        if item.label is not None:
            p.labels[item.label] += 1
        else:
            p.unlabelled += 1
        p.examples.append((item.where, _clip(item.text)))
    canonical = [canonical_text(item.text) for item in items]
    p.digests = [text_digest(text) for text in canonical]  # == content_hash's digest
    p.signatures = minhash_signatures(canonical, 5, 128, 1)  # near_duplicate_groups' defaults
    return p


def inspect_data(
    paths: list[str | Path],
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    tokenizer=None,
    cutoff_len: int | None = None,
    rules: QualityRules | None = None,
    near_dup_threshold: float = 0.8,
    preview: int = 3,
    progress: Progress | None = None,
    *,
    num_proc: int = 1,
    engine: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    work_dir: str | Path | None = None,
) -> dict:
    """The report. `progress(description, shards)` may wrap the loop over shards (a bar).

    Records stream through in shards of `chunk_size` (on `num_proc` processes, or Ray with
    engine="ray"); every statistic is a counter merged shard by shard, and the duplicate
    indexes live on disk under `work_dir` (default: the system's temporary folder), so memory
    does not grow with the record count. The report does not depend on num_proc or chunk_size.
    """
    if fmt not in INSPECT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(INSPECT_FORMATS)}")
    rules = rules or QualityRules()
    progress = progress or (lambda _desc, items: items)
    columns = dict(columns or {})
    # a registry's pre-training entry maps `text` to its column (LLaMA-Factory's `prompt`)
    text_column = columns.pop("text", "text")
    scan = _Scan(text_column=text_column)
    checked = check_columns(columns)
    with (
        Executor(num_proc, engine) as executor,
        tempfile.TemporaryDirectory(prefix="tunesmith-inspect-", dir=work_dir) as tmp,
    ):
        found = _Found(Path(tmp), tokenizer, preview)
        shards = chunked(_scan(paths, fmt, checked, scan), chunk_size)
        pending: deque = deque()

        def tasks():
            for shard in shards:
                pending.append(shard)
                yield rules, shard

        for part in progress("inspecting", executor.map_ordered(inspect_shard, tasks())):
            found.add(pending.popleft(), part)
        duplicates = found.duplicates(near_dup_threshold)
    p, tokens = found.total, found.tokens
    report = {
        "files": scan.files,
        "records": _record_counts(scan, found.valid),
        "malformed": {"count": scan.malformed_count, "examples": scan.malformed},
        "fields": _fields(scan),
        "lengths": _lengths(p, tokens),
        "truncation": _truncation(tokens, cutoff_len),
        "duplicates": duplicates,
        "languages": dict(p.languages.most_common()),
        **_text_stats(p),
        "turns": _turns(p),
        "labels": _labels(p),
        "scores": _scores(p, found.valid, rules),
        "preview": [_preview(item, tokenizer) for item in found.preview],
        "tokenizer": _tokenizer_name(tokenizer),
        "rules": rules.model_dump(),
    }
    # vision-language data (data/multimodal.py); that reader holds the records, so it only runs
    # when a record looked like one
    images = image_report(paths, fmt, columns) if scan.images else None
    if images is not None:
        report["images"] = images
    report["histograms"] = _histograms(p, tokens)
    report["quality"] = _overall(report, rules)
    report["quality_score"] = report["quality"]["overall"]  # the headline number
    report["recommendations"] = recommendations(report, rules)
    return report


class _Found:
    """The merged shards, the duplicate keys on disk, the first records for the preview, and
    the token counts (the tokenizer stays in this process)."""

    def __init__(self, tmp: Path, tokenizer, preview: int) -> None:
        self.total = _Partial()
        self.valid = 0
        self.tokenizer = tokenizer
        names = (*_TOKEN_NAMES, "errors")
        self.tokens = None if tokenizer is None else {name: Counter() for name in names}
        self.preview: list[_Item] = []
        self.preview_n = preview
        self.tmp = tmp
        self.exact = ExactIndex(tmp / "exact")
        # signatures only: they are banded once the exact copies are known (see duplicates)
        self.sig_path = tmp / "signatures.bin"
        self.signatures = self.sig_path.open("wb")
        self.examples = (tmp / "examples.jsonl").open("wb")
        self.offsets = (tmp / "examples.offsets").open("wb")
        self.position = 0

    def add(self, items: list[_Item], part: _Partial) -> None:
        self.valid += len(items)
        if len(self.preview) < self.preview_n:
            self.preview += items[: self.preview_n - len(self.preview)]
        if self.tokens is not None:
            _count_tokens(items, self.tokenizer, self.tokens)
        self.exact.add(part.digests)
        self.signatures.write(np.ascontiguousarray(part.signatures, np.uint32).tobytes())
        lines = [(json.dumps(e, ensure_ascii=False) + "\n").encode("utf-8") for e in part.examples]
        starts = np.cumsum([0, *map(len, lines)])[:-1] + self.position
        self.position += sum(map(len, lines))
        self.examples.write(b"".join(lines))
        self.offsets.write(starts.astype("<u8").tobytes())
        part.examples, part.digests, part.signatures = [], [], None
        self.total.merge(part)

    def duplicates(self, threshold: float) -> dict:
        """Exact clusters, then near clusters among one representative per exact cluster, so
        the two never count the same redundant record twice."""
        self.examples.close()
        self.offsets.close()
        copies, firsts = self.exact.duplicates()
        groups: dict[int, list[int]] = {}
        for copy, first in zip(copies.tolist(), firsts.tolist(), strict=True):
            groups.setdefault(first, [first]).append(copy)
        exact = [groups[first] for first in sorted(groups)]
        self.signatures.close()
        index = NearIndex(self.tmp / "near", threshold, signatures=self.sig_path)
        index.index_file(copies)
        near = index.groups()
        section = {"exact": self._clusters(exact), "near": self._clusters(near)}
        section["near"]["threshold"] = threshold
        return section

    def _clusters(self, groups: list[list[int]]) -> dict:
        groups = sorted(groups, key=len, reverse=True)
        examples = [[self._example(i) for i in group[:3]] for group in groups[:CLUSTER_EXAMPLES]]
        records = sum(len(g) for g in groups)
        return {
            "clusters": len(groups),
            "records": records,
            "redundant": records - len(groups),  # what dedup would remove (keeps one per cluster)
            "examples": examples,
        }

    def _example(self, i: int) -> dict:
        offsets = self.tmp / "examples.offsets"
        (start,) = np.fromfile(offsets, dtype="<u8", count=1, offset=8 * i).tolist()
        with (self.tmp / "examples.jsonl").open("rb") as f:
            f.seek(start)
            where, text = json.loads(f.readline())
        return {"where": where, "text": text}


def _tokenizer_name(tokenizer) -> str | None:
    if tokenizer is None:
        return None
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


# --- reading ---------------------------------------------------------------------------------


def _scan(paths: list[str | Path], fmt: str, columns: dict[str, str], scan: _Scan):
    for path in paths:
        yield from _scan_file(path, fmt, columns, scan)


def _scan_file(path: str | Path, fmt: str, columns: dict[str, str], scan: _Scan):
    entry = {"path": str(path), "format": None if fmt == "auto" else fmt}
    entry |= {"records": 0, "malformed": 0, "stopped": None}
    scan.files.append(entry)
    fields = scan.fields.setdefault(str(path), {})
    for record in _records(path, entry):
        entry["records"] += 1
        if isinstance(record, dict):  # unreadable: already a malformed entry
            entry["malformed"] += 1
            scan.bad(record)
            continue
        scan.parsed[str(path)] += 1
        _count_fields(record.data, fields)
        scan.images = scan.images or _may_hold_images(record.data)
        try:
            # Detected once per file, as training does; records before a detectable one are
            # malformed rather than fatal.
            entry["format"] = entry["format"] or detect_format(record.data, columns, text=True)
            item = _item(record, entry["format"], columns, scan.text_column)
        except RecordError as e:
            entry["malformed"] += 1
            scan.bad({"where": record.where, "reason": str(e)})
            continue
        yield item


def _records(path: str | Path, entry: dict) -> Iterator[RawRecord | dict]:
    """Raw records, or {"where", "reason"} for one that cannot be read.

    The shared reader goes on past a bad JSON line or CSV row, so it costs one record; where it
    cannot go on (a syntax error inside a JSON array), the rest of the file is reported as
    stopped.
    """
    records = scan_records(path)  # raises at once for a missing, unreadable or unsupported file
    try:
        for record in records:
            if not isinstance(record, BadRecord):
                yield record
                continue
            if record.fatal:
                entry["stopped"] = f"{record.where}: {record.reason}"
                reason = f"{record.reason} (the rest of the file was not read)"
                yield {"where": record.where, "reason": reason}
                return
            yield {"where": record.where, "reason": record.reason}
    except DataError as e:  # a file-level problem found once reading began (parquet)
        reason = str(e).removeprefix(f"{path}: ")
        entry["stopped"] = str(e)
        yield {"where": str(path), "reason": f"{reason} (the file was not read)"}


def _item(record: RawRecord, fmt: str, columns: dict[str, str], text_column: str) -> _Item:
    label = record.data.get("label")
    label = None if label is None else str(label)
    if fmt == "text":
        text = record.data.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise RecordError(f"field '{text_column}' is missing or empty")
        return _Item(record.where, None, text, "", text, label)
    messages = to_conversation(record, fmt, columns).messages
    turns = [m for m in messages if m["role"] != "system"]
    text = "\n".join(m["content"] for m in turns)
    prompt = "\n".join(m["content"] for m in turns if m["role"] == "user")
    response = "\n".join(m["content"] for m in turns if m["role"] == "assistant")
    return _Item(record.where, messages, text, prompt, response, label)


def _may_hold_images(data: dict) -> bool:
    """An images list, image parts, or the <image> placeholder in a turn or a field."""
    if has_images(data):
        return True
    turns = data.get("messages") or data.get("conversations")
    values = list(data.values())
    if isinstance(turns, list):
        values += [v for t in turns if isinstance(t, dict) for v in t.values()]
    return any(isinstance(v, str) and PLACEHOLDER in v for v in values)


def _count_fields(data: dict, fields: dict[str, list[int]]) -> None:
    for key, value in data.items():
        if key not in fields:
            if len(fields) >= MAX_FIELDS:
                continue
            fields[key] = [0, 0]
        empty = value is None or (isinstance(value, str | list | dict) and not _filled(value))
        fields[key][empty] += 1


def _filled(value: str | list | dict) -> bool:
    return bool(value.strip()) if isinstance(value, str) else bool(value)


# --- per-record measures ---------------------------------------------------------------------


def _score(item: _Item, rules: QualityRules) -> RecordScore:
    if item.messages is None:
        return score_text(item.text, rules)
    return score_record(item.messages, rules)


def _count_tokens(items: list[_Item], tokenizer, out: dict) -> None:
    """Per record: prompt, response and total tokens as training will see them, counted.

    A record the chat template refuses (e.g. a system turn on a template without one) is left
    out of the token counts and reported under `errors` with how often it happened.
    """
    for item in items:
        try:
            counts = _token_counts(item, tokenizer)
        except JinjaError as e:
            out["errors"][f"the chat template failed: {e}"] += 1
            continue
        for name, n in zip(("prompt", "response", "total"), counts, strict=True):
            out[name][n] += 1


def _token_counts(item: _Item, tokenizer) -> tuple[int, int, int]:
    if item.messages is None:
        n = len(tokenizer(item.text, add_special_tokens=False)["input_ids"])
        return 0, n, n
    try:  # no cutoff here: the truncation share is computed from the full lengths
        example = tokenize_conversation(tokenizer, item.messages, sys.maxsize)
    except TemplateError:  # assistant spans cannot be located: count the whole as trained
        example = tokenize_conversation(tokenizer, item.messages, sys.maxsize, True)
    trained = example.trainable_tokens
    return len(example.input_ids) - trained, trained, len(example.input_ids)


# --- report sections -------------------------------------------------------------------------


def _record_counts(scan: _Scan, valid: int) -> dict:
    read = sum(f["records"] for f in scan.files)
    return {"read": read, "valid": valid, "malformed": scan.malformed_count}


def _fields(scan: _Scan) -> dict:
    """Per file (formats differ between files): how many records fill each key."""
    return {path: _completeness(keys, scan.parsed[path]) for path, keys in scan.fields.items()}


def _completeness(keys: dict[str, list[int]], parsed: int) -> dict:
    return {
        key: {
            "non_empty": filled,
            "empty": empty,
            "missing": parsed - filled - empty,
            "completeness": round(filled / max(1, parsed), 4),
        }
        for key, (filled, empty) in keys.items()
    }


def distribution(values: list[float]) -> dict | None:
    """min, p50, p90, p99, max and mean; None for no values."""
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    out = {"min": a.min(), "p50": p50, "p90": p90, "p99": p99, "max": a.max(), "mean": a.mean()}
    return {k: round(float(v), 4) for k, v in out.items()}


def _sorted_counts(counts: Counter) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(sorted(counts), dtype=float)
    return values, np.asarray([counts[v] for v in sorted(counts)], dtype=np.int64)


def _percentiles(values: np.ndarray, weights: np.ndarray, qs: list[float]) -> list[float]:
    """np.percentile(..., method="linear") of the multiset `values` x `weights` (values
    ascending), computed the way numpy does, without expanding it."""
    ends = np.cumsum(weights)
    n = int(ends[-1])
    out = []
    for q in qs:
        quantile = np.true_divide(q, 100)
        virtual = (n - 1) * quantile  # numpy's 'linear' virtual index
        below = min(max(int(np.floor(virtual)), 0), n - 1)
        above = min(below + 1, n - 1)
        gamma = virtual - np.floor(virtual)
        a = values[np.searchsorted(ends, below, side="right")]
        b = values[np.searchsorted(ends, above, side="right")]
        diff = b - a
        out.append(float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma))
    return out


def count_distribution(counts: Counter) -> dict | None:
    """`distribution` of the values counted in `counts` (value -> how many records)."""
    if not counts:
        return None
    values, weights = _sorted_counts(counts)
    p50, p90, p99 = _percentiles(values, weights, [50, 90, 99])
    mean = float(np.dot(values, weights) / weights.sum())
    out = {"min": values[0], "p50": p50, "p90": p90, "p99": p99, "max": values[-1], "mean": mean}
    return {k: round(float(v), 4) for k, v in out.items()}


_TOKEN_NAMES = ("prompt", "response", "total")


def _lengths(p: _Partial, tokens: dict | None) -> dict:
    chars = {
        "prompt": count_distribution(p.prompt_chars),
        "response": count_distribution(p.response_chars),
    }
    if tokens is None:
        return {"chars": chars, "tokens": None, "token_errors": {}}
    per_record = {n: count_distribution(tokens[n]) for n in _TOKEN_NAMES}
    errors = dict(tokens["errors"].most_common(5))
    return {"chars": chars, "tokens": per_record, "token_errors": errors}


def _truncation(tokens: dict | None, cutoff_len: int | None) -> dict | None:
    if tokens is None or cutoff_len is None:
        return None
    totals = tokens["total"]
    over = sum(count for n, count in totals.items() if n > cutoff_len)
    share = over / max(1, sum(totals.values()))
    return {"cutoff_len": cutoff_len, "truncated": over, "share": round(share, 4)}


def _clip(text: str, limit: int = EXAMPLE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text_stats(p: _Partial) -> dict:
    """Special characters, repeats, control characters and PII, as measured by the scorer."""
    return {
        "special_chars": {
            "ratio": count_distribution(p.special),
            "records_over": p.special_over,
        },
        "repeats": {
            "longest_run": count_distribution(p.runs),
            "records_over_run": p.over_run,
            "records_over_char_share": p.over_share,
        },
        "control_chars": {"records": p.control_records, "chars": p.control_chars},
        "nul_bytes": {  # NUL (\x00) usually means a binary or mis-encoded source
            "records": p.nul,
            "examples": p.nul_examples,
        },
        "pii": {
            "records": p.pii_records,
            "by_kind": dict(p.pii_kinds.most_common()),
            "examples": p.pii_examples,
        },
    }


def _has_nul(item: _Item) -> bool:
    if item.messages is None:
        return "\x00" in item.text
    return any("\x00" in m["content"] for m in item.messages)


def _turns(p: _Partial) -> dict:
    """A turn is one user message and the assistant reply to it."""
    return {
        "conversations": p.chats,
        "histogram": {str(k): v for k, v in sorted(p.turns.items())},
        "multi_turn": sum(v for k, v in p.turns.items() if k > 1),
        "system_share": round(p.system / max(1, p.chats), 4),
    }


def _labels(p: _Partial) -> dict | None:
    if not p.labels:
        return None
    ordered = p.labels.most_common()
    return {
        "counts": dict(ordered),
        "unlabelled": p.unlabelled,
        "imbalance_ratio": round(ordered[0][1] / ordered[-1][1], 4),
    }


def _scores(p: _Partial, n: int, rules: QualityRules) -> dict:
    mean = 0.0
    if n:
        values, weights = _sorted_counts(p.scores)
        mean = round(float(np.dot(values, weights) / n), 4)
    return {
        "distribution": count_distribution(p.scores),
        "pass_score": rules.pass_score,
        "passed": p.passed,
        "failed": n - p.passed,
        "pass_rate": round(p.passed / max(1, n), 4),
        "issues": {
            code: {"count": k, "message": issue_message(code)} for code, k in p.issues.most_common()
        },
        "mean": mean,
    }


def _histogram(counts: Counter, bins: int = HIST_BINS) -> dict | None:
    """Counts up to the 99th percentile; the long tail goes to `overflow` so it stays readable."""
    if not counts:
        return None
    values, weights = _sorted_counts(counts)
    top = max(_percentiles(values, weights, [99])[0], 1.0)
    inside = values <= top
    hist, edges = np.histogram(values[inside], bins=bins, range=(0.0, top), weights=weights[inside])
    return {
        "edges": edges.round(4).tolist(),
        "counts": hist.astype(np.int64).tolist(),
        "overflow": int(weights[~inside].sum()),
    }


def _histograms(p: _Partial, tokens: dict | None) -> dict:
    values, weights = _sorted_counts(p.scores) if p.scores else (np.zeros(0), np.zeros(0, int))
    score_counts, edges = np.histogram(values, bins=10, range=(0.0, 100.0), weights=weights)
    return {
        "prompt_chars": _histogram(p.prompt_chars),
        "response_chars": _histogram(p.response_chars),
        "total_tokens": _histogram(tokens["total"]) if tokens else None,
        "scores": {
            "edges": edges.tolist(),
            "counts": score_counts.astype(np.int64).tolist(),
            "overflow": 0,
        },
    }


def _overall(report: dict, rules: QualityRules) -> dict:
    """Mean record score minus dataset-level deductions, each weight x share of records:
    redundant exact copies and near duplicates (per usable record) and malformed records (per
    record read)."""
    counts, dups = report["records"], report["duplicates"]
    valid, read = max(1, counts["valid"]), max(1, counts["read"])
    shares = [
        ("exact-duplicate copies", dups["exact"]["redundant"] / valid, rules.duplicate_weight),
        ("near duplicates", dups["near"]["redundant"] / valid, rules.near_duplicate_weight),
        ("malformed records", counts["malformed"] / read, rules.malformed_weight),
    ]
    deductions = [
        {"reason": why, "share": round(share, 4), "weight": w, "points": round(share * w, 2)}
        for why, share, w in shares
        if share > 0 and w > 0
    ]
    mean = report["scores"]["mean"]
    overall = min(100.0, max(0.0, mean - sum(d["points"] for d in deductions)))
    return {"mean_record_score": mean, "deductions": deductions, "overall": round(overall, 2)}


def _preview(item: _Item, tokenizer) -> dict:
    """The record as the model will see it; `spans` are the trained (assistant) characters."""
    if item.messages is None:
        return {"where": item.where, "template": "text", "text": item.text, "spans": []}
    if tokenizer is not None:
        try:
            text, spans = assistant_spans(tokenizer, item.messages)
            return {"where": item.where, "template": "chat", "text": text, "spans": spans}
        except (TemplateError, JinjaError):
            pass  # fall through to the plain layout; the token section reports the error
    parts, spans, pos = [], [], 0
    for m in item.messages:
        head = f"{m['role']}: "
        if m["role"] == "assistant":
            spans.append((pos + len(head), pos + len(head) + len(m["content"])))
        parts.append(head + m["content"] + "\n")
        pos += len(parts[-1])
    return {"where": item.where, "template": "plain", "text": "".join(parts), "spans": spans}


# --- recommendations -------------------------------------------------------------------------

# issue code -> the rule that sets its threshold (named in the advice)
_ISSUE_RULES = {
    "prompt_too_short": "min_prompt_chars",
    "response_too_short": "min_response_chars",
    "response_too_long": "max_response_chars",
    "too_short": "short_text_chars",
    "too_long": "long_text_chars",
    "special_chars": "max_special_ratio",
    "response_special_chars": "max_special_ratio",
    "repeated_chars": "max_char_share",
    "response_repeated_chars": "max_char_share",
    "repeat_run": "max_repeat_run",
    "response_repeat_run": "max_repeat_run",
}
# Checked by clean's own `length` step (on by default); the rest only by its quality gate.
_LENGTH_ISSUES = ("prompt_too_short", "response_too_short", "response_too_long")
CLEAN = "`tunesmith data clean FILES --out clean.jsonl`"


def recommendations(report: dict, rules: QualityRules) -> list[str]:
    """Concrete advice: each sentence names how many records and the command that fixes it."""
    advice = (
        _malformed_advice(report)
        + _duplicate_advice(report)
        + _privacy_advice(report)
        + _issue_advice(report, rules)
        + _length_advice(report)
        + _balance_advice(report, rules)
        + _size_advice(report, rules)
    )
    return advice or ["No problems found: the data is ready to train on."]


def _malformed_advice(report: dict) -> list[str]:
    bad = report["malformed"]
    if not bad["count"]:
        return []
    first = bad["examples"][0]
    return [
        f"{bad['count']} malformed record(s), first at {first['where']}: {first['reason']}; fix "
        f"them there, or let {CLEAN} set them aside in rejects.jsonl (training with "
        "`data.on_error=skip` skips them too)."
    ]


def _duplicate_advice(report: dict) -> list[str]:
    exact, near = report["duplicates"]["exact"], report["duplicates"]["near"]
    advice = []
    if exact["clusters"]:
        advice.append(
            f"{exact['records']} exact-duplicate records in {exact['clusters']} cluster(s) "
            f"({exact['redundant']} redundant copies): {CLEAN} keeps one of each (step "
            "exact_dedup, on by default)."
        )
    if near["clusters"]:
        advice.append(
            f"{near['records']} near-duplicate records in {near['clusters']} cluster(s) "
            f"(similarity >= {near['threshold']}, {near['redundant']} redundant): {CLEAN} with "
            f"near-dedup keeps one per cluster (near_dedup=true near_dup_threshold="
            f"{near['threshold']})."
        )
    return advice


def _privacy_advice(report: dict) -> list[str]:
    advice = []
    pii, control = report["pii"], report["control_chars"]
    if pii["records"]:
        advice.append(
            f"{pii['records']} record(s) contain personal information "
            f"({_counts_text(pii['by_kind'])}): {CLEAN} redacts it (pii=redact, the default) "
            "or drops those records (pii=drop)."
        )
    nul = report["nul_bytes"]
    if nul["records"]:
        advice.append(
            f"{nul['records']} record(s) contain NUL bytes (\\x00), first at "
            f"{nul['examples'][0]}: usually a binary or mis-encoded source; {CLEAN} strips the "
            "bytes (nul=strip, the default) or drops those records (nul=drop)."
        )
    if control["records"]:
        advice.append(
            f"{control['records']} record(s) contain {control['chars']} control character(s): "
            f"{CLEAN} strips them (step normalize)."
        )
    return advice


def _issue_advice(report: dict, rules: QualityRules) -> list[str]:
    scores = report["scores"]
    gate = f"{CLEAN} with min_quality_score={scores['pass_score']:g}"
    advice = []
    for code, entry in scores["issues"].items():
        rule = _ISSUE_RULES.get(code)
        if rule is None:
            continue  # PII, control characters and malformed records have their own advice
        fix = (
            f"{CLEAN} drops them (step length)" if code in _LENGTH_ISSUES else f"{gate} drops them"
        )
        advice.append(
            f"{entry['count']} record(s): {entry['message']} ({rule}={getattr(rules, rule)}); "
            f"{fix}, or change {rule} if this is normal for your task."
        )
    if scores["failed"]:
        advice.append(
            f"{scores['failed']} of {scores['passed'] + scores['failed']} record(s) score below "
            f"pass_score={scores['pass_score']:g}: {gate} keeps only the passing ones."
        )
    return advice


def _length_advice(report: dict) -> list[str]:
    cut = report["truncation"]
    if not cut or not cut["truncated"]:
        return []
    p99 = report["lengths"]["tokens"]["total"]["p99"]
    return [
        f"{cut['truncated']} record(s) ({cut['share']:.1%}) are longer than "
        f"cutoff_len={cut['cutoff_len']} tokens and would be truncated: raise `data.cutoff_len` "
        f"(the 99th percentile is {int(p99)} tokens) or lower max_response_chars for "
        f"{CLEAN}."
    ]


def _balance_advice(report: dict, rules: QualityRules) -> list[str]:
    labels = report["labels"]
    if not labels or labels["imbalance_ratio"] <= rules.max_label_imbalance:
        return []
    counts = list(labels["counts"].items())
    (top, n_top), (low, n_low) = counts[0], counts[-1]
    return [
        f"labels are imbalanced: '{top}' has {n_top} records and '{low}' only {n_low} (ratio "
        f"{labels['imbalance_ratio']:.1f} > {rules.max_label_imbalance:g}): rebalance with "
        "`tunesmith data balance SRC DST --by label` or train with class weights."
    ]


def _size_advice(report: dict, rules: QualityRules) -> list[str]:
    valid = report["records"]["valid"]
    if valid >= rules.min_dataset_records:
        return []
    return [
        f"only {valid} usable record(s): about 1,000-5,000 are recommended for a simple task and "
        "20,000 or more for a complex one; collect more, or generate some with "
        "`tunesmith data augment` or `tunesmith data synth`."
    ]


# --- output ----------------------------------------------------------------------------------


def write_inspect_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """inspect.html (plots embedded) and inspect.json (the same numbers) in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / "inspect.html", out_dir / "inspect.json"
    atomic_write(json_path, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    atomic_write(html_path, render_html(report))
    return html_path, json_path


# --- the HTML page ---------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; } img { max-width: 100%; }
dl { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; }
dt { font-weight: 600; } dd { margin: 0; }
pre { background: #f7f7f7; padding: 8px; white-space: pre-wrap; word-break: break-word; }
mark { background: #ffe58a; }
"""


def render_html(report: dict) -> str:
    """A self-contained page: summary, advice, plots, then one section per report part."""
    sections = [
        _summary_html(report),
        _h2("Recommendations") + _list(report["recommendations"]),
        _h2("Files") + _files_html(report),
        _h2("Lengths") + _lengths_html(report),
        _h2("Quality scores") + _scores_html(report),
        _h2("Duplicates") + _duplicates_html(report),
        _h2("Languages") + _languages_html(report),
        _h2("Text checks") + _checks_html(report),
        _h2("Fields") + _fields_html(report),
        _h2("Turns and labels") + _turns_html(report),
        _h2("Malformed records") + _malformed_html(report),
        _h2("Preview (trained text highlighted)") + _preview_html(report),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Data inspection</title>"
        f"<style>{_STYLE}</style></head><body><h1>Data inspection</h1>"
        + "".join(sections)
        + "</body></html>\n"
    )


def _h2(title: str) -> str:
    return f"<h2>{esc(title)}</h2>"


def _list(lines: list[str]) -> str:
    return "<ol>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ol>"


def _table(headers: list[str], rows: list[list[object]]) -> str:
    return table(headers, rows, empty="none")  # a section with nothing to show says so


def marked(text: str, spans: list) -> str:
    """Escaped text with <mark> around each [start, end) span."""
    out, pos = [], 0
    for start, end in spans:
        out += [esc(text[pos:start]), "<mark>", esc(text[start:end]), "</mark>"]
        pos = end
    return "".join(out) + esc(text[pos:])


def _summary_html(r: dict) -> str:
    q, s, n = r["quality"], r["scores"], r["records"]
    return facts_list(
        {
            "records read": n["read"],
            "usable records": n["valid"],
            "malformed records": n["malformed"],
            "overall quality": f"{q['overall']} / 100",
            "mean record score": q["mean_record_score"],
            "pass rate": f"{s['pass_rate']:.1%} (pass_score {s['pass_score']})",
            "tokenizer": r["tokenizer"] or "none (character lengths only)",
        }
    )


def _files_html(r: dict) -> str:
    rows = [
        [f["path"], f["format"] or "-", f["records"], f["malformed"], f["stopped"] or ""]
        for f in r["files"]
    ]
    return _table(["file", "format", "records", "malformed", "stopped at"], rows)


_STAT_KEYS = ("min", "p50", "p90", "p99", "max", "mean")


def _lengths_html(r: dict) -> str:
    rows = []
    for unit in ("chars", "tokens"):
        for name, dist in (r["lengths"][unit] or {}).items():
            if dist:
                rows.append([f"{name} ({unit})", *(dist[k] for k in _STAT_KEYS)])
    cut = r["truncation"]
    note = "".join(
        f"<p>{esc(e)} ({n} records)</p>" for e, n in r["lengths"]["token_errors"].items()
    )
    if cut:
        note += (
            f"<p>{cut['truncated']} record(s) ({cut['share']:.1%}) exceed cutoff_len "
            f"{cut['cutoff_len']} and would be truncated.</p>"
        )
    return _table(["length", *_STAT_KEYS], rows) + note + png_img(_plot_lengths(r), "lengths")


def _scores_html(r: dict) -> str:
    q, s = r["quality"], r["scores"]
    deductions = [[d["reason"], d["share"], d["weight"], d["points"]] for d in q["deductions"]]
    issues = [[code, e["message"], e["count"]] for code, e in s["issues"].items()]
    return (
        png_img(_plot_scores(r), "scores")
        + "<h3>Dataset-level deductions</h3>"
        + _table(["reason", "share", "weight", "points"], deductions)
        + "<h3>Issues</h3>"
        + _table(["issue", "meaning", "records"], issues)
    )


def _duplicates_html(r: dict) -> str:
    parts = []
    for kind, d in r["duplicates"].items():
        parts.append(
            f"<h3>{kind}: {d['records']} records in {d['clusters']} clusters "
            f"({d['redundant']} redundant)</h3>"
        )
        for cluster in d["examples"]:
            parts.append(_table(["where", "text"], [[e["where"], e["text"]] for e in cluster]))
    return "".join(parts)


def _languages_html(r: dict) -> str:
    rows = [[lang, n] for lang, n in r["languages"].items()]
    return _table(["language", "records"], rows) + png_img(_plot_languages(r), "languages")


def _checks_html(r: dict) -> str:
    sc, rep, cc, pii = r["special_chars"], r["repeats"], r["control_chars"], r["pii"]
    facts = facts_list(
        {
            "special-character ratio": _dist_text(sc["ratio"]),
            "records over the special-character limit": sc["records_over"],
            "longest repeated-character run": _dist_text(rep["longest_run"]),
            "records over the run limit": rep["records_over_run"],
            "records dominated by one character": rep["records_over_char_share"],
            "records with control characters": f"{cc['records']} ({cc['chars']} characters)",
            "records with NUL bytes": r["nul_bytes"]["records"],
            "records with PII": pii["records"],
        }
    )
    kinds = _table(["PII kind", "hits"], [[k, n] for k, n in pii["by_kind"].items()])
    rows = [[e["where"], _counts_text(e["kinds"])] for e in pii["examples"]]
    where = _table(["where", "kinds"], rows)
    return facts + kinds + where


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in counts.items())


def _dist_text(dist: dict | None) -> str:
    return ", ".join(f"{k} {dist[k]}" for k in _STAT_KEYS) if dist else "-"


def _fields_html(r: dict) -> str:
    rows = [
        [path, key, f["non_empty"], f["empty"], f["missing"], f"{f['completeness']:.1%}"]
        for path, keys in r["fields"].items()
        for key, f in keys.items()
    ]
    return _table(["file", "field", "non-empty", "empty", "missing", "completeness"], rows)


def _turns_html(r: dict) -> str:
    t, labels = r["turns"], r["labels"]
    out = _table(["turns", "conversations"], [[k, v] for k, v in t["histogram"].items()])
    out += f"<p>system message share: {t['system_share']:.1%}</p>"
    if labels:
        out += _table(["label", "records"], [[k, v] for k, v in labels["counts"].items()])
        out += f"<p>imbalance ratio (largest / smallest): {labels['imbalance_ratio']}</p>"
    return out


def _malformed_html(r: dict) -> str:
    bad = r["malformed"]
    shown = f"<p>{bad['count']} in total; the first {len(bad['examples'])} are listed.</p>"
    rows = [[e["where"], e["reason"]] for e in bad["examples"]]
    return shown + _table(["where", "reason"], rows)


_LAYOUTS = {"chat": "chat template", "plain": "plain layout", "text": "plain text"}


def _preview_html(r: dict) -> str:
    return "".join(
        f"<h3>{esc(p['where'])} ({_LAYOUTS[p['template']]})</h3>"
        f"<pre>{marked(p['text'], p['spans'])}</pre>"
        for p in r["preview"]
    )


# --- plots (matplotlib without pyplot: no GUI backend, safe headless) -------------------------


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _plot_lengths(r: dict) -> bytes | None:
    from matplotlib.figure import Figure

    names = ("prompt_chars", "response_chars", "total_tokens")
    hists = [(n, r["histograms"][n]) for n in names if r["histograms"][n]]
    if not hists:
        return None
    fig = Figure(figsize=(5 * len(hists), 3.2))
    for ax, (name, h) in zip(fig.subplots(1, len(hists), squeeze=False)[0], hists, strict=True):
        ax.stairs(h["counts"], h["edges"], fill=True, color="steelblue")
        extra = f" (+{h['overflow']} above p99)" if h["overflow"] else ""
        ax.set_title(name.replace("_", " ") + extra)
        ax.set_ylabel("records")
        if name == "total_tokens" and r["truncation"]:
            ax.axvline(r["truncation"]["cutoff_len"], color="red", linestyle="--", label="cutoff")
            ax.legend()
    return _png(fig)


def _plot_scores(r: dict) -> bytes | None:
    from matplotlib.figure import Figure

    h = r["histograms"]["scores"]
    if not sum(h["counts"]):
        return None
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    ax.stairs(h["counts"], h["edges"], fill=True, color="goldenrod")
    ax.axvline(r["scores"]["pass_score"], color="red", linestyle="--", label="pass score")
    ax.set_xlabel("record score")
    ax.set_ylabel("records")
    ax.legend()
    return _png(fig)


def _plot_languages(r: dict) -> bytes | None:
    from matplotlib.figure import Figure

    langs = r["languages"]
    if not langs:
        return None
    fig = Figure(figsize=(max(4, 0.8 * len(langs)), 3))
    ax = fig.subplots()
    ax.bar(list(langs), list(langs.values()), color="seagreen")
    ax.set_ylabel("records")
    return _png(fig)
