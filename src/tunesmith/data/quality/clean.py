"""`tunesmith data clean`: an ordered, configurable pipeline over canonical conversations.

Records are read into canonical conversations (malformed ones are rejected at step "parse"),
then every step in `CleanConfig.steps` runs in the order given. A step keeps, modifies or
rejects each record; every rejection is kept with its file:line, step and reason, so
`read == kept + rejected` always holds. The per-record steps are linear; the two dedup steps
hash (exact) or MinHash-LSH (near) the whole set once. `clean_records` holds the records in
memory (the library form); `clean_stream.clean_files` runs these same steps in shards with the
dedup state on disk and writes the same files (what `tunesmith data clean` uses).

Dedup key: the whole conversation, every turn with its role ("system: ...\\nuser: ...\\n
assistant: ..."), as the steps before left it. Two records asking the same question with
different answers are therefore not duplicates. exact_dedup compares that text literally (so
the step order matters: normalize first and width/blank variants merge); near_dedup compares
dedup.canonical_text (case and blanks folded) by MinHash over character n-grams.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.config.base import listed_once
from tunesmith.config.load import (
    closest,
    literal_hint,
    parse_override,
    read_yaml_mapping,
    set_dotted,
)
from tunesmith.data.convert import to_record, write_records
from tunesmith.data.formats import (
    FORMATS,
    Conversation,
    RecordError,
    check_columns,
    detect_format,
    to_conversation,
)
from tunesmith.data.quality.pii import (
    DEFAULT_PII_KINDS,
    PII_KINDS,
    find_pii,
    find_sensitive_words,
    redact_pii,
)
from tunesmith.data.quality.rules import QualityRules, score_record
from tunesmith.data.quality.text import detect_language, normalize_text
from tunesmith.data.quality.version import write_version
from tunesmith.data.readers import BadRecord, scan_records
from tunesmith.runs.folder import atomic_write
from tunesmith.utils.errors import ConfigError, DataError

StepName = Literal[
    "normalize",
    "required",
    "length",
    "pii",
    "sensitive",
    "language",
    "quality",
    "exact_dedup",
    "near_dedup",
]
STEPS: tuple[str, ...] = get_args(StepName)
ROLES = ("system", "user", "assistant")
SENSITIVE_PLACEHOLDER = "[SENSITIVE]"
_LENGTH_KEYS = ("min_prompt_chars", "min_response_chars", "max_response_chars")


class CleanConfig(BaseModel):
    """What `clean` does and in which order. Defaults follow the seeds (module 5, §7)."""

    model_config = ConfigDict(extra="forbid")

    steps: list[StepName] = Field(default_factory=lambda: list(STEPS))
    # normalize: NFKC and Chinese punctuation (control characters and stray blanks always go)
    nfkc: bool = True
    zh_punct: bool = True
    # required: roles (system/user/assistant) that must have non-empty text, or raw fields
    required: list[str] = Field(default_factory=lambda: ["user", "assistant"])
    # length, in characters: prompt = the user turns, response = the assistant turns
    min_prompt_chars: int = Field(5, ge=0)
    min_response_chars: int = Field(10, ge=0)
    max_response_chars: int = Field(10000, ge=1)
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_threshold: float = Field(0.8, gt=0, le=1)
    ngram: int = Field(5, ge=1)
    pii: Literal["redact", "drop", "off"] = "redact"
    pii_kinds: list[str] = Field(default_factory=lambda: list(DEFAULT_PII_KINDS))
    sensitive_words: list[str] = Field(default_factory=list)
    sensitive_words_file: str | None = None  # one word per line; blank lines ignored
    sensitive_action: Literal["drop", "redact"] = "drop"
    languages: list[str] = Field(default_factory=list)  # keep only these; [] keeps all
    min_quality_score: float | None = Field(None, ge=0, le=100)  # None: no quality gate
    rules: QualityRules = Field(default_factory=QualityRules)
    output_format: Literal["same", "alpaca", "sharegpt", "openai"] = "same"
    # NUL bytes (\x00), checked as records are read (a binary or mis-encoded source): strip
    # the bytes (counted as modified at "parse"), or drop the records that hold any
    nul: Literal["strip", "drop"] = "strip"

    @field_validator("steps")
    @classmethod
    def _unique_steps(cls, steps: list[str]) -> list[str]:
        return listed_once(steps, "step(s)")

    @field_validator("pii_kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        for kind in kinds:
            if kind not in PII_KINDS:
                hint = closest(kind, list(PII_KINDS))
                raise ValueError(
                    f"unknown PII kind '{kind}'{hint}; allowed: {', '.join(PII_KINDS)}"
                )
        return kinds

    @field_validator("sensitive_words_file")
    @classmethod
    def _words_file_exists(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @model_validator(mode="after")
    def _one_set_of_length_limits(self) -> CleanConfig:
        # The length step and the quality score must judge length alike, so the top-level limits
        # are copied into `rules`; a differing value set only under `rules` is adopted instead.
        for key in _LENGTH_KEYS:
            mine, theirs = getattr(self, key), getattr(self.rules, key)
            if theirs != mine and theirs != QualityRules.model_fields[key].default:
                if key in self.model_fields_set:
                    raise ValueError(f"{key}={mine} and rules.{key}={theirs} disagree; set it once")
                setattr(self, key, theirs)
        if self.max_response_chars < self.min_response_chars:
            raise ValueError("max_response_chars must be >= min_response_chars")
        self.rules = self.rules.model_copy(update={k: getattr(self, k) for k in _LENGTH_KEYS})
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> CleanConfig:
        """Load a YAML mapping of these keys, then `key=value` overrides. Raises ConfigError.

        A relative `sensitive_words_file` is relative to the YAML file's folder.
        """
        path = Path(path)
        data = read_yaml_mapping(path, "clean config", "a mapping of clean keys")
        words = data.get("sensitive_words_file")
        if isinstance(words, str) and not Path(words).is_absolute():
            data["sensitive_words_file"] = str(path.parent / words)
        for item in overrides or []:
            set_dotted(data, *parse_override(item))
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_mapping(cls, data: dict, source: str = "clean config") -> CleanConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = [_describe(err) for err in exc.errors()]
            message = f"{source}: invalid clean configuration\n  " + "\n  ".join(lines)
            raise ConfigError(message) from None

    def word_list(self) -> list[str]:
        """sensitive_words plus the words of sensitive_words_file."""
        words = list(self.sensitive_words)
        if self.sensitive_words_file:
            text = Path(self.sensitive_words_file).read_text(encoding="utf-8-sig")
            words += [w.strip() for w in text.splitlines() if w.strip()]
        return list(dict.fromkeys(w for w in words if w))


def _describe(err: dict) -> str:
    loc = err["loc"]
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        allowed = list(_model_at(loc[:-1]).model_fields)
        prefix = ".".join(str(p) for p in loc[:-1])
        hint = closest(str(loc[-1]), allowed, prefix)
        return f"unknown key '{key}'{hint}; allowed here: {', '.join(allowed)}"
    message = err["msg"].removeprefix("Value error, ")
    if not loc:
        return message
    return f"{key}: got {err['input']!r}: {message}{literal_hint(err)}"


def _model_at(parent: tuple) -> type[BaseModel]:
    return QualityRules if parent and parent[0] == "rules" else CleanConfig


# --- result ---------------------------------------------------------------------------------


@dataclass
class CleanResult:
    kept: list[Conversation]
    rejects: list[dict]  # {"source", "line", "step", "reason", "record": the raw data as read}
    step_stats: list[dict]  # {"step", "in", "kept", "rejected", "modified", "seconds", ...}
    read: int
    formats: dict  # input path -> detected (or given) format, None for an empty file
    metrics: dict = field(default_factory=dict)  # pass rate, mean score, duplicates, PII hits


@dataclass
class _Item:
    conv: Conversation
    raw: dict
    where: str
    score: float | None = None  # quality score, reused for the metrics when still valid


@dataclass
class _Context:
    cfg: CleanConfig
    words: list[str]
    rejects: list[dict] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=dict)  # per step: hits, languages

    def reject(self, source: str, line: int, step: str, reason: str, record: Any) -> None:
        self.rejects.append(
            {"source": source, "line": line, "step": step, "reason": reason, "record": record}
        )


# --- reading ----------------------------------------------------------------------------------


def clean_records(
    paths: Iterable[str | Path],
    cfg: CleanConfig,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
) -> CleanResult:
    """Read every file and run the configured steps. Unreadable files raise DataError."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: auto, {', '.join(FORMATS)}")
    columns = check_columns(columns)
    ctx = _Context(cfg, cfg.word_list())
    start = time.perf_counter()
    items, formats, read = [], {}, 0
    for path in paths:
        file_items, formats[str(path)], n = _parse_file(path, fmt, columns, ctx)
        items += file_items
        read += n
    stripped = ctx.counts.get("parse", Counter())["nul stripped"]
    stats = [_stats("parse", read, len(items), read - len(items), stripped, start)]
    for step in cfg.steps:
        if _active(step, ctx):
            items, step_stat = _run_step(step, items, ctx)
            stats.append(step_stat)
    kept = [item.conv for item in items]
    result = CleanResult(kept, ctx.rejects, stats, read, formats)
    result.metrics = _metrics(result, items, cfg)
    return result


def _parse_file(path: str | Path, fmt: str, columns: dict, ctx: _Context) -> tuple:
    """(items, format, records read) of one file; malformed records go to ctx's rejects."""
    info: dict = {}
    items = list(parse_items(path, fmt, columns, ctx, info))
    return items, info["format"], info["read"]


def parse_items(
    path: str | Path, fmt: str, columns: dict, ctx: _Context, info: dict
) -> Iterator[_Item]:
    """The usable records of one file, one at a time; malformed ones go to ctx's rejects.

    `info` gets "format" (detected or given) and "read" (records read so far), kept current
    while the file is read, so a streaming caller knows the format as soon as it is found.
    """
    source, file_fmt, read = str(path), None if fmt == "auto" else fmt, 0
    info["format"], info["read"] = file_fmt, 0
    first_keys: list[str] | None = None
    for record in scan_records(path):
        if isinstance(record, BadRecord):
            if record.fatal:  # the rest of the file cannot be read: the file must be fixed
                raise record.error()
            read += 1
            info["read"] = read
            ctx.reject(record.source, record.line, "parse", record.reason, record.text)
            continue
        read += 1
        info["read"] = read
        try:
            # Detected from the first record that has a known shape: one without any is
            # malformed whatever the format, so it is rejected rather than stopping the run.
            file_fmt = file_fmt or detect_format(record.data, columns)
            info["format"] = file_fmt
            conv = to_conversation(record, file_fmt, columns)
        except RecordError as e:
            first_keys = first_keys if first_keys is not None else sorted(record.data)
            ctx.reject(record.source, record.line, "parse", str(e), record.data)
            continue
        conv = _without_nul(conv, ctx)
        if isinstance(conv, str):
            ctx.reject(record.source, record.line, "parse", conv, record.data)
            continue
        yield _Item(conv, record.data, record.where)
    if read and file_fmt is None and first_keys is not None:
        # Not one record of a known shape: the file, not its records, is wrong.
        raise DataError(
            f"{source}: cannot detect the format of any record (first keys: {first_keys[:10]}); "
            "expected alpaca (instruction/output), sharegpt (conversations) or openai (messages)"
        )


def _without_nul(conv: Conversation, ctx: _Context) -> Conversation | str:
    """The conversation (its NUL bytes stripped with nul=strip), or why it is dropped."""
    turns = [n for n, m in enumerate(conv.messages, start=1) if "\x00" in m["content"]]
    if not turns:
        return conv
    if ctx.cfg.nul == "drop":
        return (
            f"contains NUL bytes (\\x00) in message {turns[0]}: usually a binary or mis-encoded "
            "source (nul=strip keeps the record without them)"
        )
    ctx.counts.setdefault("parse", Counter())["nul stripped"] += 1
    messages = [{**m, "content": m["content"].replace("\x00", "")} for m in conv.messages]
    return replace(conv, messages=messages)


# --- running steps ------------------------------------------------------------------------------

# A per-record step returns None (keep as is), new messages (modified) or a str (reject reason).
Verdict = list[dict] | str | None


def _active(step: str, ctx: _Context) -> bool:
    cfg = ctx.cfg
    switches = {
        "pii": cfg.pii != "off" and bool(cfg.pii_kinds),
        "sensitive": bool(ctx.words),
        "language": bool(cfg.languages),
        "quality": cfg.min_quality_score is not None,
        "exact_dedup": cfg.exact_dedup,
        "near_dedup": cfg.near_dedup,
    }
    return switches.get(step, True)


def _run_step(step: str, items: list[_Item], ctx: _Context) -> tuple[list[_Item], dict]:
    start = time.perf_counter()
    if step in _SET_STEPS:
        kept, rejected = _SET_STEPS[step](items, ctx)
        modified = 0
    else:
        kept, rejected, modified = _per_record(_RECORD_STEPS[step], items, ctx)
    for item, reason in rejected:
        ctx.reject(item.conv.source, item.conv.line, step, reason, item.raw)
    stat = _stats(step, len(items), len(kept), len(rejected), modified, start)
    if ctx.counts.get(step):
        stat["hits" if step != "language" else "detected"] = dict(ctx.counts[step])
    return kept, stat


def _per_record(check: Callable[[_Item, _Context], Verdict], items: list, ctx: _Context):
    kept, rejected, modified = [], [], 0
    for item in items:
        verdict = check(item, ctx)
        if isinstance(verdict, str):
            rejected.append((item, verdict))
            continue
        if verdict is not None:
            item.conv = replace(item.conv, messages=verdict)
            item.score = None  # the text changed: an earlier score no longer holds
            modified += 1
        kept.append(item)
    return kept, rejected, modified


def _stats(step: str, n_in: int, kept: int, rejected: int, modified: int, start: float) -> dict:
    seconds = round(time.perf_counter() - start, 4)
    return {
        "step": step,
        "in": n_in,
        "kept": kept,
        "rejected": rejected,
        "modified": modified,
        "seconds": seconds,
    }


def _with_contents(messages: list[dict], contents: list[str]) -> list[dict] | None:
    """New messages with these contents, or None when nothing changed."""
    if all(m["content"] == c for m, c in zip(messages, contents, strict=True)):
        return None
    return [{**m, "content": c} for m, c in zip(messages, contents, strict=True)]


# --- per-record steps ---------------------------------------------------------------------------


def _normalize(item: _Item, ctx: _Context) -> Verdict:
    cfg = ctx.cfg
    messages = item.conv.messages
    return _with_contents(
        messages, [normalize_text(m["content"], cfg.nfkc, cfg.zh_punct) for m in messages]
    )


def _required(item: _Item, ctx: _Context) -> Verdict:
    for name in ctx.cfg.required:
        if name in ROLES:
            # an assistant turn that calls tools may have no text (data/tools.py)
            texts = [
                m["content"]
                for m in item.conv.messages
                if m["role"] == name and not m.get("tool_calls")
            ]
            if not texts:
                return f"required role '{name}' is missing"
            if not all(t.strip() for t in texts):
                return f"required role '{name}' has an empty turn"
        elif item.raw.get(name) in (None, "", [], {}):
            return f"required field '{name}' is missing or empty"
    return None


def _length(item: _Item, ctx: _Context) -> Verdict:
    cfg, messages = ctx.cfg, item.conv.messages
    # Same measure as rules.score_record: the joined turns, surrounding blanks ignored.
    prompt = len("\n".join(m["content"] for m in messages if m["role"] == "user").strip())
    response = len("\n".join(m["content"] for m in messages if m["role"] == "assistant").strip())
    if prompt < cfg.min_prompt_chars:
        return f"prompt has {prompt} chars, below min_prompt_chars={cfg.min_prompt_chars}"
    if response < cfg.min_response_chars:
        return f"response has {response} chars, below min_response_chars={cfg.min_response_chars}"
    if response > cfg.max_response_chars:
        return f"response has {response} chars, above max_response_chars={cfg.max_response_chars}"
    return None


def _pii(item: _Item, ctx: _Context) -> Verdict:
    messages, kinds = item.conv.messages, ctx.cfg.pii_kinds
    counts = ctx.counts.setdefault("pii", Counter())
    if ctx.cfg.pii == "drop":
        found = Counter(h.kind for m in messages for h in find_pii(m["content"], kinds))
        counts.update(found)
        return f"contains PII: {_counted(found)}" if found else None
    contents = []
    for m in messages:
        text, hits = redact_pii(m["content"], kinds)
        counts.update(h.kind for h in hits)
        contents.append(text)
    return _with_contents(messages, contents)


def _sensitive(item: _Item, ctx: _Context) -> Verdict:
    messages = item.conv.messages
    found = [w for m in messages for w in find_sensitive_words(m["content"], ctx.words)]
    if not found:
        return None
    ctx.counts.setdefault("sensitive", Counter()).update(found)
    if ctx.cfg.sensitive_action == "drop":
        return f"contains sensitive word(s): {', '.join(repr(w) for w in dict.fromkeys(found))}"
    # Longest first, so a word is not half-replaced by a shorter word it contains.
    ordered = sorted(set(found), key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(w) for w in ordered), re.IGNORECASE)
    return _with_contents(
        messages, [pattern.sub(SENSITIVE_PLACEHOLDER, m["content"]) for m in messages]
    )


def _language(item: _Item, ctx: _Context) -> Verdict:
    # Judged on the user and assistant turns: a system prompt is often boilerplate English.
    text = "\n".join(m["content"] for m in item.conv.messages if m["role"] != "system")
    lang = detect_language(text)
    ctx.counts.setdefault("language", Counter())[lang] += 1
    if lang in ctx.cfg.languages:
        return None
    return f"language '{lang}' is not one of {', '.join(ctx.cfg.languages)}"


def _quality(item: _Item, ctx: _Context) -> Verdict:
    result = score_record(item.conv.messages, ctx.cfg.rules)
    item.score = result.score
    threshold = ctx.cfg.min_quality_score
    if result.score >= threshold:
        return None
    return f"quality score {result.score:g} < {threshold:g}: {'; '.join(result.messages)}"


def _counted(counts: Counter) -> str:
    return ", ".join(f"{kind}×{n}" for kind, n in counts.items())


# --- set steps ---------------------------------------------------------------------------------


def dedup_text(messages: list[dict]) -> str:
    """The dedup key: every turn with its role, one per line."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _exact_dedup(items: list[_Item], ctx: _Context) -> tuple[list, list]:
    # Literal equality of the text as the earlier steps left it, so the configured order decides
    # what counts as equal (normalize first and width/blank variants merge). `inspect`'s
    # content_hash folds case and blanks; near_dedup below catches those variants too.
    first: dict[str, int] = {}
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        j = first.setdefault(dedup_text(item.conv.messages), i)
        if j != i:
            groups.setdefault(j, [j]).append(i)
    return _drop_later(
        items, list(groups.values()), lambda kept: f"exact duplicate of {kept.where}"
    )


def _near_dedup(items: list[_Item], ctx: _Context) -> tuple[list, list]:
    from tunesmith.data.quality.dedup import near_duplicate_groups

    cfg = ctx.cfg
    texts = [dedup_text(i.conv.messages) for i in items]
    groups = near_duplicate_groups(texts, threshold=cfg.near_dup_threshold, ngram=cfg.ngram)
    return _drop_later(
        items,
        groups,
        lambda first: f"near-duplicate of {first.where} (similarity ≥ {cfg.near_dup_threshold:g})",
    )


def _drop_later(items: list[_Item], groups: list[list[int]], reason: Callable) -> tuple:
    """Keep the first record of each group, reject the others naming the one kept."""
    dropped: dict[int, str] = {}
    for group in groups:
        first, *rest = sorted(group)
        for i in rest:
            dropped[i] = reason(items[first])
    kept = [item for i, item in enumerate(items) if i not in dropped]
    rejected = [(items[i], why) for i, why in sorted(dropped.items())]
    return kept, rejected


_RECORD_STEPS: dict[str, Callable[[_Item, _Context], Verdict]] = {
    "normalize": _normalize,
    "required": _required,
    "length": _length,
    "pii": _pii,
    "sensitive": _sensitive,
    "language": _language,
    "quality": _quality,
}
_SET_STEPS = {"exact_dedup": _exact_dedup, "near_dedup": _near_dedup}


# --- metrics and output -------------------------------------------------------------------------


def _metrics(result: CleanResult, items: list[_Item], cfg: CleanConfig) -> dict:
    scores = [
        item.score if item.score is not None else score_record(item.conv.messages, cfg.rules).score
        for item in items
    ]
    by_step = Counter(r["step"] for r in result.rejects)
    pii = next((s.get("hits", {}) for s in result.step_stats if s["step"] == "pii"), {})
    return {
        "read": result.read,
        "kept": len(result.kept),
        "rejected": len(result.rejects),
        "pass_rate": round(len(result.kept) / result.read, 6) if result.read else 0.0,
        "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
        "exact_duplicates": by_step["exact_dedup"],
        "near_duplicates": by_step["near_dedup"],
        "pii_hits": sum(pii.values()),
        "pii_hits_by_kind": dict(pii),
        "rejected_by_step": dict(by_step),
    }


def output_format(result: CleanResult, cfg: CleanConfig) -> str:
    """The format to write: cfg.output_format, or the inputs' own when they all agree."""
    if cfg.output_format != "same":
        return cfg.output_format
    found = {path: f for path, f in result.formats.items() if f}
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{path}: {f}" for path, f in found.items())
        raise ConfigError(
            f"output_format: 'same' is ambiguous, the inputs differ ({listed}); "
            f"set output_format to one of {', '.join(FORMATS)}"
        )
    return next(iter(found.values()), "alpaca")  # no record at all: any format writes nothing


def write_clean_output(
    result: CleanResult,
    out_path: str | Path,
    cfg: CleanConfig,
    rejects_path: str | Path | None = None,
) -> dict:
    """Write the cleaned file, rejects.jsonl, <out>.stats.json and <out>.meta.json.

    Returns the summary (the content of the stats file plus the paths written).
    """
    out = Path(out_path)
    _refuse_overwriting_inputs(out, result)
    fmt = output_format(result, cfg)
    records = [to_record(c.messages, fmt, getattr(c, "tools", None)) for c in result.kept]
    write_records(out, records)
    rejects = Path(rejects_path) if rejects_path else out.parent / "rejects.jsonl"
    _write_rejects(rejects, result.rejects)
    meta = write_version(
        out,
        records,
        "clean",
        cfg.model_dump(mode="json"),
        [Path(p) for p in result.formats],
        {k: v for k, v in result.metrics.items() if k != "rejected_by_step"},
    )
    summary = {
        "output": str(out),
        "format": fmt,
        "rejects_path": str(rejects),
        "stats_path": str(_stats_path(out)),
        "version_path": str(meta),
        "inputs": result.formats,
        "read": result.read,
        "kept": len(result.kept),
        "rejected": len(result.rejects),
        "steps": result.step_stats,
        "metrics": result.metrics,
    }
    atomic_write(_stats_path(out), json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    return summary


def _stats_path(out: Path) -> Path:
    return Path(f"{out}.stats.json")


def _refuse_overwriting_inputs(out: Path, result: CleanResult) -> None:
    # Overwriting an input would destroy the original the rejects and the lineage point back to.
    target = os.path.normcase(os.path.abspath(out))
    for path in result.formats:
        if os.path.normcase(os.path.abspath(path)) == target:
            raise DataError(f"{out}: the output would overwrite an input file; choose another path")


def _write_rejects(path: Path, rejects: list[dict]) -> None:
    lines = (json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rejects)
    atomic_write(path, "".join(lines))
