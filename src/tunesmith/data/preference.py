"""Preference data: pairs (prompt, chosen, rejected) and KTO examples (prompt, completion, label).

Formats, detected per file from the first record:
- alpaca: `instruction` (+ `input`, `system`, `history`) with `chosen` and `rejected` texts;
- sharegpt: `conversations` ending with a user turn, `chosen` / `rejected` as message objects
  (LLaMA-Factory's `ranking: true` layout) or plain texts;
- openai: `messages` ending with a user turn, `chosen` / `rejected` as messages or texts;
- KTO: any of the above whose record carries a boolean `label` (LLaMA-Factory's `kto_tag`): the
  last assistant turn is the completion, the turns before it the prompt.

The prompt is rendered with data/render.py (the one template function, generation prompt
added) and the completion is the rest of the rendered conversation, so TRL receives token ids
that match what the model sees at inference and never applies a template of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config.schema import DataConfig
from tunesmith.data.formats import RecordError, check_columns, detect_format, to_conversation
from tunesmith.data.readers import RawRecord, read_records
from tunesmith.data.registry import Source
from tunesmith.data.render import TemplateError, render_chat
from tunesmith.utils.errors import DataError

PREFERENCE_COLUMNS = ("chosen", "rejected", "kto_tag")  # renamable on top of formats' own
RejectSink = Callable[[str, int, str, object], None]


@dataclass
class PreferenceRecord:
    """One pair (chosen and rejected set) or one KTO example (completion and label set)."""

    prompt: list[dict]  # messages ending with a user turn
    source: str
    line: int
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None
    label: bool | None = None

    @property
    def is_pair(self) -> bool:
        return self.chosen is not None


@dataclass
class PreferenceData:
    examples: list[dict]  # prompt_ids + chosen_ids/rejected_ids, or + completion_ids/label
    stats: dict = field(default_factory=dict)


# --- reading ---------------------------------------------------------------------------


def read_preference_records(
    sources: Sequence[str | Path | Source],
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    on_error: str = "stop",
    reject: RejectSink | None = None,
) -> tuple[list[PreferenceRecord], dict]:
    """Every record of the files; bad ones stop (DataError `file:line`) or go to `reject`."""
    records: list[PreferenceRecord] = []
    stats = {"read": 0, "rejected": 0}
    for source in sources:
        paths, file_fmt, cols = (
            source if isinstance(source, Source) else ([source], fmt, columns or {})
        )
        for path in paths:
            for raw in read_records(path):
                stats["read"] += 1
                try:
                    records.append(parse_record(raw, file_fmt, cols))
                except RecordError as e:
                    if on_error == "stop" or reject is None:
                        raise DataError(f"{raw.where}: {e}") from None
                    stats["rejected"] += 1
                    reject(raw.source, raw.line, str(e), raw.data)
    return records, stats


def parse_record(
    raw: RawRecord, fmt: str = "auto", columns: dict | None = None
) -> PreferenceRecord:
    columns = dict(columns or {})
    own = {name: columns.pop(name, name) for name in PREFERENCE_COLUMNS}
    label_key = own["kto_tag"] if own["kto_tag"] != "kto_tag" else "label"
    check_columns(columns)
    data = raw.data
    if fmt == "auto":
        fmt = detect_format(data, columns, beside="next to chosen/rejected")
    if label_key in data:
        return _kto(raw, fmt, columns, data[label_key], label_key)
    if own["chosen"] not in data or own["rejected"] not in data:
        raise RecordError(
            f"expected '{own['chosen']}' and '{own['rejected']}' (a preference pair) or a boolean "
            f"'{label_key}' (KTO); keys found: {sorted(data)[:10]}"
        )
    prompt = _prompt(raw, fmt, columns)
    chosen = _answer(data[own["chosen"]], own["chosen"], fmt, columns)
    rejected = _answer(data[own["rejected"]], own["rejected"], fmt, columns)
    return PreferenceRecord(prompt, raw.source, raw.line, chosen=chosen, rejected=rejected)


_PLACEHOLDER = "\x00answer"  # completes the prompt so formats.py validates it as a conversation


def _prompt(raw: RawRecord, fmt: str, columns: dict) -> list[dict]:
    data = dict(raw.data)
    if fmt == "alpaca":
        data[columns.get("output", "output")] = _PLACEHOLDER
    else:
        key = columns.get("messages" if fmt == "openai" else "conversations")
        key = key or ("messages" if fmt == "openai" else "conversations")
        turns = data.get(key)
        if not isinstance(turns, list):
            raise RecordError(f"field '{key}' must be a list of turns")
        data[key] = [*turns, _message(_PLACEHOLDER, fmt, columns)]
    messages = to_conversation(RawRecord(raw.source, raw.line, data), fmt, columns).messages
    return messages[:-1]


def _message(content: str, fmt: str, columns: dict) -> dict:
    if fmt == "sharegpt":
        role = columns.get("role_tag", "from")
        return {
            role: columns.get("assistant_tag", "gpt"),
            columns.get("content_tag", "value"): content,
        }
    return {"role": "assistant", "content": content}


def _answer(value: object, key: str, fmt: str, columns: dict) -> str:
    if isinstance(value, dict):  # a message object: {"from": "gpt", "value": ...} or role/content
        content_key = columns.get("content_tag", "value") if fmt == "sharegpt" else "content"
        value = value.get(content_key, value.get("content", value.get("value")))
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"field '{key}' must be a non-empty text or message, got {value!r:.60}")
    return value


def _kto(raw: RawRecord, fmt: str, columns: dict, label: object, key: str) -> PreferenceRecord:
    if not isinstance(label, bool):
        raise RecordError(f"field '{key}' must be true or false, got {label!r:.40}")
    messages = to_conversation(raw, fmt, columns).messages
    record = PreferenceRecord(messages[:-1], raw.source, raw.line)
    record.completion, record.label = messages[-1]["content"], label
    return record


# --- tokenizing ------------------------------------------------------------------------


def split_ids(
    tokenizer, prompt: list[dict], completion: str, cutoff_len: int
) -> tuple[list[int], list[int], bool]:
    """(prompt ids, completion ids, truncated) of prompt + one assistant reply.

    The completion holds the reply and what the template closes the turn with (end-of-turn
    token), so the model learns to stop. It is cut to fit cutoff_len; a prompt that fills
    cutoff_len alone is a ValueError.
    """
    prompt_text = render_chat(tokenizer, prompt, add_generation_prompt=True)
    full = render_chat(tokenizer, [*prompt, {"role": "assistant", "content": completion}])
    if not full.startswith(prompt_text):
        raise TemplateError(
            "the chat template renders the prompt differently once the answer follows, so the "
            "answer cannot be separated; use a template without that (model.chat_template)"
        )
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    cut = next((i for i, (start, _) in enumerate(offsets) if start >= len(prompt_text)), len(ids))
    prompt_ids, completion_ids = ids[:cut], ids[cut:]
    if len(prompt_ids) >= cutoff_len:
        raise ValueError(
            f"the prompt alone has {len(prompt_ids)} tokens, data.cutoff_len={cutoff_len}"
        )
    room = cutoff_len - len(prompt_ids)
    return prompt_ids, completion_ids[:room], len(completion_ids) > room


def tokenize_records(
    records: Iterable[PreferenceRecord],
    tokenizer,
    cutoff_len: int,
    paired: bool,
    on_error: str = "stop",
    reject: RejectSink | None = None,
) -> PreferenceData:
    """TRL-ready examples. paired=False (KTO) also accepts pairs: chosen becomes a desirable
    completion and rejected an undesirable one."""
    examples: list[dict] = []
    stats = {"truncated": 0, "unusable": 0, "pairs": 0, "desirable": 0, "undesirable": 0}
    for record in records:
        if paired and not record.is_pair:
            raise DataError(
                f"{record.source}:{record.line}: a KTO record (completion with a label) given to "
                "a pairwise stage; pairs need chosen and rejected (train.stage=kto reads both)"
            )
        try:
            examples += _examples(record, tokenizer, cutoff_len, paired, stats)
        except ValueError as e:
            if isinstance(e, TemplateError) or on_error == "stop" or reject is None:
                raise DataError(f"{record.source}:{record.line}: {e}") from None
            stats["unusable"] += 1
            reject(record.source, record.line, str(e), {"prompt": record.prompt})
    stats["examples"] = len(examples)
    return PreferenceData(examples, stats)


def _examples(record, tokenizer, cutoff_len, paired, stats) -> list[dict]:
    if paired:
        prompt_ids, chosen, cut_c = split_ids(tokenizer, record.prompt, record.chosen, cutoff_len)
        _, rejected, cut_r = split_ids(tokenizer, record.prompt, record.rejected, cutoff_len)
        stats["truncated"] += cut_c or cut_r
        stats["pairs"] += 1
        return [{"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected}]
    items = (
        [(record.chosen, True), (record.rejected, False)]
        if record.is_pair
        else [(record.completion, record.label)]
    )
    out = []
    for text, label in items:
        prompt_ids, completion_ids, cut = split_ids(tokenizer, record.prompt, text, cutoff_len)
        stats["truncated"] += cut
        stats["desirable" if label else "undesirable"] += 1
        out.append({"prompt_ids": prompt_ids, "completion_ids": completion_ids, "label": label})
    return out


def build_preference_data(
    sources: Sequence[str | Path | Source],
    cfg: DataConfig,
    tokenizer,
    paired: bool,
    reject: RejectSink | None = None,
) -> PreferenceData:
    """Read and tokenize; every record read is kept or passed to `reject`."""
    records, read = read_preference_records(sources, cfg.format, cfg.columns, cfg.on_error, reject)
    if cfg.max_samples:
        records = records[: cfg.max_samples]
    data = tokenize_records(records, tokenizer, cfg.cutoff_len, paired, cfg.on_error, reject)
    data.stats = {
        "read": read["read"],
        "rejected": read["rejected"] + data.stats["unusable"],
        **{k: v for k, v in data.stats.items() if k != "unusable"},
    }
    if not data.examples:
        raise DataError(f"no usable preference records in {[str(s) for s in sources]}")
    return data
