"""`tunesmith data inspect` as a library: read data files once and report what a data team checks.

`inspect_data` returns the report as a JSON-able dict; `write_inspect_report` writes it as
inspect.json and as inspect.html with the plots drawn from the very same numbers. Every step is
linear in the number of records (duplicates by hashing, near-duplicates by MinHash LSH), so a
100k-record file is fine. A malformed record is counted and shown with its file:line, never fatal;
only a missing or unsupported file stops the run.
"""

from __future__ import annotations

import io
import json
import sys
from collections import Counter
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
from tunesmith.data.multimodal import image_report
from tunesmith.data.quality.dedup import exact_duplicate_groups, near_duplicate_groups
from tunesmith.data.quality.rules import (
    QualityRules,
    RecordScore,
    issue_message,
    score_record,
    score_text,
)
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
    items: list[_Item] = field(default_factory=list)
    malformed: list[dict] = field(default_factory=list)  # {"where", "reason"}
    files: list[dict] = field(default_factory=list)
    # per file: key -> [non-empty, empty], and how many records were JSON objects (the base)
    fields: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    parsed: Counter = field(default_factory=Counter)
    text_column: str = "text"  # where plain-text (pre-training) records keep their text


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
) -> dict:
    """The report. `progress(description, items)` may wrap the per-record loops (a bar)."""
    if fmt not in INSPECT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(INSPECT_FORMATS)}")
    rules = rules or QualityRules()
    progress = progress or (lambda _desc, items: items)
    columns = dict(columns or {})
    # a registry's pre-training entry maps `text` to its column (LLaMA-Factory's `prompt`)
    text_column = columns.pop("text", "text")
    scan = _scan(paths, fmt, check_columns(columns), text_column)
    items = scan.items
    scores = [_score(item, rules) for item in progress("scoring", items)]
    tokens = _tokens(items, tokenizer, progress) if tokenizer is not None else None
    report = {
        "files": scan.files,
        "records": _record_counts(scan),
        "malformed": {
            "count": len(scan.malformed),
            "examples": scan.malformed[:MALFORMED_EXAMPLES],
        },
        "fields": _fields(scan),
        "lengths": _lengths(items, tokens),
        "truncation": _truncation(tokens, cutoff_len),
        "duplicates": _duplicates(items, near_dup_threshold),
        "languages": dict(Counter(detect_language(i.text) for i in items).most_common()),
        **_text_stats(items, scores, rules),
        "turns": _turns(items),
        "labels": _labels(items),
        "scores": _scores(scores, rules),
        "preview": [_preview(item, tokenizer) for item in items[:preview]],
        "tokenizer": _tokenizer_name(tokenizer),
        "rules": rules.model_dump(),
    }
    images = image_report(paths, fmt, columns)  # vision-language data (data/multimodal.py)
    if images is not None:
        report["images"] = images
    report["histograms"] = _histograms(items, scores, tokens)
    report["quality"] = _overall(report, rules)
    report["quality_score"] = report["quality"]["overall"]  # the headline number
    report["recommendations"] = recommendations(report, rules)
    return report


def _tokenizer_name(tokenizer) -> str | None:
    if tokenizer is None:
        return None
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


# --- reading ---------------------------------------------------------------------------------


def _scan(paths: list[str | Path], fmt: str, columns: dict[str, str], text: str) -> _Scan:
    scan = _Scan(text_column=text)
    for path in paths:
        _scan_file(path, fmt, columns, scan)
    return scan


def _scan_file(path: str | Path, fmt: str, columns: dict[str, str], scan: _Scan) -> None:
    entry = {"path": str(path), "format": None if fmt == "auto" else fmt}
    entry |= {"records": 0, "malformed": 0, "stopped": None}
    scan.files.append(entry)
    fields = scan.fields.setdefault(str(path), {})
    for record in _records(path, entry):
        entry["records"] += 1
        if isinstance(record, dict):  # unreadable: already a malformed entry
            entry["malformed"] += 1
            scan.malformed.append(record)
            continue
        scan.parsed[str(path)] += 1
        _count_fields(record.data, fields)
        try:
            # Detected once per file, as training does; records before a detectable one are
            # malformed rather than fatal.
            entry["format"] = entry["format"] or detect_format(record.data, columns, text=True)
            scan.items.append(_item(record, entry["format"], columns, scan.text_column))
        except RecordError as e:
            entry["malformed"] += 1
            scan.malformed.append({"where": record.where, "reason": str(e)})


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


def _tokens(items: list[_Item], tokenizer, progress: Progress) -> dict:
    """Per record: prompt, response and total tokens as training will see them.

    A record the chat template refuses (e.g. a system turn on a template without one) is left
    out of the token counts and reported under `errors` with how often it happened.
    """
    out: dict = {"prompt": [], "response": [], "total": [], "errors": Counter()}
    for item in progress("tokenizing", items):
        try:
            counts = _token_counts(item, tokenizer)
        except JinjaError as e:
            out["errors"][f"the chat template failed: {e}"] += 1
            continue
        for name, n in zip(("prompt", "response", "total"), counts, strict=True):
            out[name].append(n)
    return out


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


def _record_counts(scan: _Scan) -> dict:
    read = sum(f["records"] for f in scan.files)
    return {"read": read, "valid": len(scan.items), "malformed": len(scan.malformed)}


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


_TOKEN_NAMES = ("prompt", "response", "total")


def _lengths(items: list[_Item], tokens: dict | None) -> dict:
    chars = {
        "prompt": distribution([len(i.prompt) for i in items if i.messages is not None]),
        "response": distribution([len(i.response) for i in items]),
    }
    if tokens is None:
        return {"chars": chars, "tokens": None, "token_errors": {}}
    per_record = {n: distribution(tokens[n]) for n in _TOKEN_NAMES}
    errors = dict(tokens["errors"].most_common(5))
    return {"chars": chars, "tokens": per_record, "token_errors": errors}


def _truncation(tokens: dict | None, cutoff_len: int | None) -> dict | None:
    if tokens is None or cutoff_len is None:
        return None
    over = sum(n > cutoff_len for n in tokens["total"])
    share = over / max(1, len(tokens["total"]))
    return {"cutoff_len": cutoff_len, "truncated": over, "share": round(share, 4)}


def _duplicates(items: list[_Item], threshold: float) -> dict:
    """Exact clusters, then near clusters among one representative per exact cluster, so the
    two never count the same redundant record twice."""
    texts = [i.text for i in items]
    exact = exact_duplicate_groups(texts)
    copies = {i for group in exact for i in group[1:]}
    keep = [i for i in range(len(texts)) if i not in copies]
    near = near_duplicate_groups([texts[i] for i in keep], threshold=threshold)
    near = [[keep[j] for j in group] for group in near]
    section = {"exact": _clusters(exact, items), "near": _clusters(near, items)}
    section["near"]["threshold"] = threshold
    return section


def _clusters(groups: list[list[int]], items: list[_Item]) -> dict:
    groups = sorted(groups, key=len, reverse=True)
    examples = [
        [{"where": items[i].where, "text": _clip(items[i].text)} for i in group[:3]]
        for group in groups[:CLUSTER_EXAMPLES]
    ]
    records = sum(len(g) for g in groups)
    return {
        "clusters": len(groups),
        "records": records,
        "redundant": records - len(groups),  # what dedup would remove (keeps one per cluster)
        "examples": examples,
    }


def _clip(text: str, limit: int = EXAMPLE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text_stats(items: list[_Item], scores: list[RecordScore], rules: QualityRules) -> dict:
    """Special characters, repeats, control characters and PII, as measured by the scorer."""
    stats = [s.stats for s in scores]
    pii_kinds: Counter = Counter()
    pii_examples = []
    for item, st in zip(items, stats, strict=True):
        if st.pii:
            kinds = Counter(hit.kind for hit in st.pii)
            pii_kinds.update(kinds)
            if len(pii_examples) < PII_EXAMPLES:  # where and kind only: reports get shared
                pii_examples.append({"where": item.where, "kinds": dict(kinds)})
    return {
        "special_chars": {
            "ratio": distribution([st.special_ratio for st in stats]),
            "records_over": sum(st.special_ratio > rules.max_special_ratio for st in stats),
        },
        "repeats": {
            "longest_run": distribution([st.longest_run for st in stats]),
            "records_over_run": sum(st.longest_run > rules.max_repeat_run for st in stats),
            "records_over_char_share": sum(st.char_share > rules.max_char_share for st in stats),
        },
        "control_chars": {
            "records": sum(st.control_chars > 0 for st in stats),
            "chars": sum(st.control_chars for st in stats),
        },
        "nul_bytes": {  # NUL (\x00) usually means a binary or mis-encoded source
            "records": len(nul := [item.where for item in items if _has_nul(item)]),
            "examples": nul[:MALFORMED_EXAMPLES],
        },
        "pii": {
            "records": sum(bool(st.pii) for st in stats),
            "by_kind": dict(pii_kinds.most_common()),
            "examples": pii_examples,
        },
    }


def _has_nul(item: _Item) -> bool:
    if item.messages is None:
        return "\x00" in item.text
    return any("\x00" in m["content"] for m in item.messages)


def _turns(items: list[_Item]) -> dict:
    """A turn is one user message and the assistant reply to it."""
    chats = [i.messages for i in items if i.messages is not None]
    histogram = Counter(sum(m["role"] == "assistant" for m in msgs) for msgs in chats)
    system = sum(msgs[0]["role"] == "system" for msgs in chats)
    return {
        "conversations": len(chats),
        "histogram": {str(k): v for k, v in sorted(histogram.items())},
        "multi_turn": sum(v for k, v in histogram.items() if k > 1),
        "system_share": round(system / max(1, len(chats)), 4),
    }


def _labels(items: list[_Item]) -> dict | None:
    counts = Counter(i.label for i in items if i.label is not None)
    if not counts:
        return None
    ordered = counts.most_common()
    return {
        "counts": dict(ordered),
        "unlabelled": sum(i.label is None for i in items),
        "imbalance_ratio": round(ordered[0][1] / ordered[-1][1], 4),
    }


def _scores(scores: list[RecordScore], rules: QualityRules) -> dict:
    passed = sum(s.passed for s in scores)
    issues = Counter(code for s in scores for code in s.issues)
    return {
        "distribution": distribution([s.score for s in scores]),
        "pass_score": rules.pass_score,
        "passed": passed,
        "failed": len(scores) - passed,
        "pass_rate": round(passed / max(1, len(scores)), 4),
        "issues": {
            code: {"count": n, "message": issue_message(code)} for code, n in issues.most_common()
        },
        "mean": round(float(np.mean([s.score for s in scores])), 4) if scores else 0.0,
    }


def _histogram(values: list[float], bins: int = HIST_BINS) -> dict | None:
    """Counts up to the 99th percentile; the long tail goes to `overflow` so it stays readable."""
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    top = max(float(np.percentile(a, 99)), 1.0)
    counts, edges = np.histogram(a[a <= top], bins=bins, range=(0.0, top))
    return {
        "edges": edges.round(4).tolist(),
        "counts": counts.tolist(),
        "overflow": int((a > top).sum()),
    }


def _histograms(items: list[_Item], scores: list[RecordScore], tokens: dict | None) -> dict:
    score_counts, edges = np.histogram([s.score for s in scores], bins=10, range=(0.0, 100.0))
    return {
        "prompt_chars": _histogram([len(i.prompt) for i in items if i.messages is not None]),
        "response_chars": _histogram([len(i.response) for i in items]),
        "total_tokens": _histogram(tokens["total"]) if tokens else None,
        "scores": {"edges": edges.tolist(), "counts": score_counts.tolist(), "overflow": 0},
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
