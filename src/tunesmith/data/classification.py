"""Text classification data: a text (and optionally a text pair) with one label, or several.

Read from any file data/readers.py reads; columns come from train.cls. Labels are names or
integer ids (an id indexes train.cls.labels); the label set is train.cls.labels, or else the
sorted labels of the training data. Every record read is kept or rejected with its reason.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tunesmith.config.cls import ClsConfig
from tunesmith.data.readers import RawRecord, read_records
from tunesmith.utils.errors import ConfigError, DataError

RejectSink = Callable[[str, int, str, object], None]  # (source, line, reason, record)


@dataclass(frozen=True)
class ClsRecord:
    text: str
    pair: str | None
    labels: tuple[str, ...]  # label names (ids resolved); one unless multi-label
    source: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class ClsData:
    train: list[ClsRecord]
    eval: list[ClsRecord]  # data.eval files, or the stratified validation split
    labels: list[str]  # id -> name
    stats: dict = field(default_factory=dict)


def load_cls_data(
    train_files: Sequence[str],
    eval_files: Sequence[str],
    cfg: ClsConfig,
    *,
    on_error: str = "stop",
    max_samples: int | None = None,
    seed: int = 42,
    reject: RejectSink | None = None,
) -> ClsData:
    """Read, check and split. Bad records (of train and eval files) follow `on_error`; an eval
    label outside the label set always stops (the evaluation would silently lose a class).
    stats: read == kept + rejected over all files; train / eval after the split."""
    skip = on_error == "skip" and reject is not None
    records, read, rejected = _read_all(train_files, cfg, skip, reject)
    labels = cfg.labels or _label_set(records)
    records, unknown = _resolve(records, labels, cfg, skip, reject)
    rejected += unknown
    beyond = max(0, len(records) - max_samples) if max_samples else 0
    records = records[: len(records) - beyond]
    if not cfg.multi_label and len({r.labels for r in records}) < 2:
        raise DataError(
            f"{', '.join(train_files)}: classification needs at least two classes in the "
            f"training data, found {sorted({r.labels[0] for r in records})}"
        )
    if eval_files:
        evals, eval_read, eval_rejected = _read_all(eval_files, cfg, skip, reject)
        evals, _ = _resolve(evals, labels, cfg, skip=False, reject=None)
        read, rejected = read + eval_read, rejected + eval_rejected
        train, source = records, "files"
    else:
        train, evals = stratified_split(records, cfg.val_fraction, seed)
        source = "split" if evals else None
    stats = {
        "read": read,
        "kept": read - rejected,
        "rejected": rejected,
        "beyond_max_samples": beyond,
        "train": len(train),
        "eval": len(evals),
        "eval_source": source,
        "labels": label_counts(train, labels),
    }
    return ClsData(train, evals, list(labels), stats)


def load_cls_test(files: Sequence[str], cfg: ClsConfig, labels: Sequence[str]) -> list[ClsRecord]:
    """Test records for a trained classifier, read with its columns and label set: a bad record
    or a label outside the set stops with its file and line (a score over part of a test set
    would mislead)."""
    cfg = cfg.model_copy(update={"labels": list(labels)})
    records, _, _ = _read_all(files, cfg, skip=False, reject=None)
    records, _ = _resolve(records, labels, cfg, skip=False, reject=None)
    if not records:
        raise DataError(f"{', '.join(files)}: no test records")
    return records


def label_counts(records: Sequence[ClsRecord], labels: Sequence[str]) -> dict[str, int]:
    """Records per label, in label order (multi-label: a record counts for each of its labels)."""
    counts = Counter(name for record in records for name in record.labels)
    return {name: counts[name] for name in labels}


def stratified_split(
    records: Sequence[ClsRecord], fraction: float, seed: int
) -> tuple[list[ClsRecord], list[ClsRecord]]:
    """(train, validation): each class (multi-label: each label combination) gives about
    `fraction` of its records, never its last one, so every class stays in training."""
    if fraction <= 0:
        return list(records), []
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        groups[tuple(sorted(record.labels))].append(index)
    rng = random.Random(seed)
    held: set[int] = set()
    for key in sorted(groups):  # sorted: the same split whatever the file order of classes
        members = groups[key]
        rng.shuffle(members)
        held.update(members[: min(round(len(members) * fraction), len(members) - 1)])
    train = [r for i, r in enumerate(records) if i not in held]
    return train, [r for i, r in enumerate(records) if i in held]


def encode_labels(
    record: ClsRecord, label_ids: dict[str, int], multi_label: bool
) -> int | list[float]:
    """The class id, or for multi-label a 0/1 vector over the label set."""
    if not multi_label:
        return label_ids[record.labels[0]]
    vector = [0.0] * len(label_ids)
    for name in record.labels:
        vector[label_ids[name]] = 1.0
    return vector


def cls_max_length(tokenizer, cutoff_len: int) -> int:
    """Tokens per text (pair): data.cutoff_len, capped at what the model takes (an encoder's
    position table, e.g. 512); a tokenizer without a limit reports a huge model_max_length."""
    return min(cutoff_len, tokenizer.model_max_length)


# the auto long-text rule (train.cls.long_text): cutting the ends of at most this share of the
# texts loses little; past this share of all tokens cut, one window per text would miss most
AUTO_HEAD_SHARE = 0.10
AUTO_CHUNK_LOSS = 0.5


@dataclass
class ClsEncoding:
    examples: list[dict]  # model inputs and labels, one per window of a text
    docs: list[int]  # the record each example came from (chunk: several examples per record)
    truncated: int  # records longer than the model takes
    strategy: str  # the long-text strategy used: head, head_tail or chunk
    why: str = ""  # the auto rule's reason, for the run's data line

    def pool(self, values) -> np.ndarray:
        """Per-record values (logits, labels) in record order, from per-example ones in this
        encoding's order: the mean over each record's windows."""
        values, docs = np.asarray(values, dtype=float), np.asarray(self.docs)
        records = int(docs.max()) + 1 if len(docs) else 0
        sums = np.zeros((records, *values.shape[1:]))
        np.add.at(sums, docs, values)
        counts = np.bincount(docs, minlength=records).reshape(-1, *[1] * (values.ndim - 1))
        return sums / counts

    def by_length(self) -> ClsEncoding:
        """The examples sorted by length (less padding in batches); pool still returns record
        order."""
        order = sorted(range(len(self.examples)), key=lambda i: len(self.examples[i]["input_ids"]))
        return dataclasses.replace(
            self, examples=[self.examples[i] for i in order], docs=[self.docs[i] for i in order]
        )


def choose_long_text(lengths: Sequence[int], budget: int, cfg: ClsConfig) -> tuple[str, str]:
    """(strategy, why): train.cls.long_text, or for auto the rule its description states,
    applied to the texts' token lengths against the model's budget."""
    if cfg.long_text != "auto":
        return cfg.long_text, "as train.cls.long_text says"
    if cfg.text_pair_column:
        return "head", "train.cls.long_text auto: text pairs keep their heads"
    long = sum(n > budget for n in lengths)
    cut = sum(max(0, n - budget) for n in lengths) / max(sum(lengths), 1)
    share = long / max(len(lengths), 1)
    facts = (
        f"train.cls.long_text auto: {share:.0%} of the texts are longer than {budget} tokens, "
        f"{cut:.0%} of all tokens would be cut"
    )
    if share <= AUTO_HEAD_SHARE:
        return "head", facts
    return ("chunk" if cut > AUTO_CHUNK_LOSS else "head_tail"), facts


def tokenize_cls(
    records: Sequence[ClsRecord],
    labels: Sequence[str],
    tokenizer,
    cfg: ClsConfig,
    cutoff_len: int,
    strategy: str | None = None,
) -> ClsEncoding:
    """Examples with input_ids, attention_mask, [token_type_ids,] labels: each text (pair) in
    at most `cls_max_length(tokenizer, cutoff_len)` tokens by the long-text `strategy` (None:
    chosen from these records by train.cls.long_text). Labels may be empty (prediction)."""
    texts = [r.text for r in records]
    pairs = [r.pair or "" for r in records] if cfg.text_pair_column else None
    max_length = cls_max_length(tokenizer, cutoff_len)
    if not records:
        return ClsEncoding([], [], 0, strategy or "head")
    full = tokenizer(texts, pairs, truncation=False)["input_ids"]
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=bool(pairs))
    why = ""
    if strategy is None:
        content = [len(ids) - (max_length - budget) for ids in full]
        strategy, why = choose_long_text(content, budget, cfg)
    inputs, docs = encode_texts(texts, pairs, tokenizer, max_length, strategy, cfg)
    label_ids = {name: i for i, name in enumerate(labels)}
    examples = [
        features
        | ({"labels": encode_labels(records[d], label_ids, cfg.multi_label)} if labels else {})
        for features, d in zip(inputs, docs, strict=True)
    ]
    truncated = sum(len(ids) > max_length for ids in full)
    return ClsEncoding(examples, docs, truncated, strategy, why)


def encode_texts(
    texts: list[str], pairs: list[str] | None, tokenizer, max_length: int, strategy: str, cfg
) -> tuple[list[dict], list[int]]:
    """(model inputs, the text each came from) for one long-text strategy."""
    if pairs is not None or strategy == "head":
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        return _rows(encoded), list(range(len(texts)))
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if strategy == "head_tail":
        cut = [_head_and_tail(text, tokenizer, budget, cfg.head_share) for text in texts]
        encoded = tokenizer(cut, truncation=True, max_length=max_length)
        return _rows(encoded), list(range(len(texts)))
    if strategy == "chunk":
        return _chunks(texts, tokenizer, max_length, budget, cfg)
    raise ConfigError(f"train.cls.long_text: unknown strategy '{strategy}'")


def _rows(encoded) -> list[dict]:
    keys = [k for k in encoded if k not in ("offset_mapping", "overflow_to_sample_mapping")]
    return [{k: encoded[k][i] for k in keys} for i in range(len(encoded["input_ids"]))]


def _head_and_tail(text: str, tokenizer, budget: int, head_share: float) -> str:
    """The text's first head_share x budget tokens and its last ones, joined: cut at token
    boundaries (the tokenizer's character offsets), so the result tokenizes back to the budget."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    if len(offsets) <= budget:
        return text
    head = max(1, int(budget * head_share))
    tail = budget - head
    return text[: offsets[head - 1][1]] + " " + text[offsets[len(offsets) - tail][0] :]


def _chunks(texts, tokenizer, max_length: int, budget: int, cfg) -> tuple[list[dict], list[int]]:
    """Overlapping windows of each text (the tokenizer's overflow), at most max_chunks of them
    evenly spread over the text."""
    encoded = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        stride=min(cfg.chunk_overlap, budget // 2),
        return_overflowing_tokens=True,
    )
    rows, owners = _rows(encoded), list(encoded["overflow_to_sample_mapping"])
    windows: dict[int, list[int]] = defaultdict(list)
    for index, owner in enumerate(owners):
        windows[owner].append(index)
    keep = []
    for owner in range(len(texts)):
        indexes = windows[owner]
        if len(indexes) > cfg.max_chunks:
            step = (len(indexes) - 1) / (cfg.max_chunks - 1) if cfg.max_chunks > 1 else 0
            indexes = [indexes[round(i * step)] for i in range(cfg.max_chunks)]
        keep += indexes
    return [rows[i] for i in keep], [owners[i] for i in keep]


# reading ------------------------------------------------------------------------------------


def _read_all(
    files: Sequence[str], cfg: ClsConfig, skip: bool, reject: RejectSink | None
) -> tuple[list[ClsRecord], int, int]:
    records: list[ClsRecord] = []
    read = rejected = 0
    for path in files:
        for raw in read_records(path):
            read += 1
            parsed = _parse(raw, cfg)
            if isinstance(parsed, ClsRecord):
                records.append(parsed)
                continue
            if not skip:
                raise DataError(f"{raw.where}: {parsed}")
            reject(raw.source, raw.line, parsed, raw.data)
            rejected += 1
    return records, read, rejected


class _Unusable(Exception):
    """A record that cannot be used; the message is the reason."""


def _parse(raw: RawRecord, cfg: ClsConfig) -> ClsRecord | str:
    """The record, or the reason it cannot be used."""
    try:
        text = _text(raw.data, cfg.text_column)
        pair = _text(raw.data, cfg.text_pair_column) if cfg.text_pair_column else None
        labels = _raw_labels(raw.data.get(cfg.label_column), cfg)
    except _Unusable as exc:
        return str(exc)
    return ClsRecord(text, pair, labels, raw.source, raw.line)


def _text(data: dict, column: str) -> str:
    value = data.get(column)
    if value is None:
        raise _Unusable(f"missing text column '{column}' (columns: {', '.join(map(str, data))})")
    if not isinstance(value, str):
        raise _Unusable(f"column '{column}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise _Unusable(f"column '{column}' is empty")
    return value


def _raw_labels(value: object, cfg: ClsConfig) -> tuple[str, ...]:
    """Label values as text (names or ids, resolved against the label set later)."""
    column = cfg.label_column
    if value is None:
        raise _Unusable(f"missing label column '{column}'")
    if not cfg.multi_label:
        name = _one_label(value, column)
        if not name:
            raise _Unusable(f"column '{column}' is empty")
        return (name,)
    if isinstance(value, str):
        value = value.split(cfg.label_delimiter)
    items = value if isinstance(value, list) else [value]
    names = (_one_label(item, column) for item in items)
    return tuple(dict.fromkeys(name for name in names if name))  # [] or "": no label applies


def _one_label(value: object, column: str) -> str:
    """A label as text ('' for an empty string)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():  # 1.0 from a parquet float column
        return str(int(value))
    raise _Unusable(f"column '{column}': a label is a name or an integer id, got {value!r}")


# label set ----------------------------------------------------------------------------------


def _label_set(records: Sequence[ClsRecord]) -> list[str]:
    """Sorted label names; integer ids sort as numbers (2 before 10)."""
    names = {name for record in records for name in record.labels}
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _resolve(
    records: list[ClsRecord],
    labels: Sequence[str],
    cfg: ClsConfig,
    skip: bool,
    reject: RejectSink | None,
) -> tuple[list[ClsRecord], int]:
    """Map ids to names; a label outside the set rejects the record (or stops)."""
    known = set(labels)
    ids_allowed = cfg.labels is not None
    kept: list[ClsRecord] = []
    for record in records:
        names, unknown = [], []
        for value in record.labels:
            if value in known:
                names.append(value)
            elif ids_allowed and value.isdigit() and int(value) < len(labels):
                names.append(labels[int(value)])
            else:
                unknown.append(value)
        if not unknown:
            names = tuple(dict.fromkeys(names))  # an id and its name given together count once
            kept.append(ClsRecord(record.text, record.pair, names, record.source, record.line))
            continue
        reason = (
            f"unknown label {', '.join(repr(v) for v in unknown)}; the labels are "
            f"{', '.join(labels)} (train.cls.labels, or else those of the training data)"
        )
        if not skip:
            raise DataError(f"{record.where}: {reason}")
        reject(record.source, record.line, reason, {"text": record.text, "labels": unknown})
    return kept, len(records) - len(kept)


# label-dependent lengths --------------------------------------------------------------------

# Share of the length variance the labels may explain before length-grouped batches turn into
# one-label batches (eta squared; on benchmarks/cls_data.py's five sources it is ~0.3, and
# grouped batches trained to 0.39 held-out accuracy against 0.72 with random batches).
LABEL_LENGTH_LIMIT = 0.1


def batch_sampling(examples: Sequence[dict]) -> tuple[str, str]:
    """train.sampling auto for classification: (sampler, why). Length-grouped batches carry the
    least padding, but where the label decides the length they hold one label each, and every
    step pulls the classifier towards that label: random batches then."""
    lengths = [len(e["input_ids"]) for e in examples]
    keys = [str(e.get("labels")) for e in examples]
    share = label_length_share(lengths, keys)
    if share >= LABEL_LENGTH_LIMIT:
        why = f"the labels explain {share:.0%} of the length variance"
        return "random", why + "; length-grouped batches would hold one label each"
    return "group_by_length", f"the labels explain {share:.0%} of the length variance"


def label_length_share(lengths: Sequence[int], keys: Sequence[str]) -> float:
    """eta squared: the between-label share of the lengths' variance (0: lengths independent
    of the label, 1: the label fixes the length)."""
    if len(lengths) < 2:
        return 0.0
    mean = sum(lengths) / len(lengths)
    total = sum((n - mean) ** 2 for n in lengths)
    if total == 0:
        return 0.0
    groups: dict[str, list[int]] = {}
    for n, key in zip(lengths, keys, strict=True):
        groups.setdefault(key, []).append(n)
    between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values())
    return between / total
