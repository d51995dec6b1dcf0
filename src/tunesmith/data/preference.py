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


TRUNCATION_MODES = ("split", "keep_prompt")


def split_ids(
    tokenizer, prompt: list[dict], completion: str, cutoff_len: int, truncation: str = "split"
) -> tuple[list[int], list[int], bool]:
    """(prompt ids, completion ids, truncated) of prompt + one assistant reply, fit to
    cutoff_len by the truncation policy (see `fit_pair`).

    The completion holds the reply and what the template closes the turn with (end-of-turn
    token), so the model learns to stop.
    """
    prompt_ids, (completion_ids,), truncated = fit_pair(
        tokenizer, prompt, [completion], cutoff_len, truncation
    )
    return prompt_ids, completion_ids, truncated


def fit_pair(
    tokenizer,
    prompt: list[dict],
    completions: Sequence[str],
    cutoff_len: int,
    truncation: str = "split",
) -> tuple[list[int], list[list[int]], bool]:
    """(prompt ids, the ids of each completion, truncated): prompt + each completion fits in
    cutoff_len tokens.

    The budget is shared as `budget` says (from the longest completion, so chosen and rejected
    get the same share); the prompt keeps its end (`fit_prompt`: the system message and the
    latest turns), each completion its start.
    """
    prompt_ids, answers = _encode(tokenizer, prompt, completions)
    longest = max(len(a) for a in answers)
    if len(prompt_ids) + longest <= cutoff_len:
        return prompt_ids, answers, False
    prompt_room, _ = budget(len(prompt_ids), longest, cutoff_len, truncation)
    if len(prompt_ids) > prompt_room:
        messages, prompt_ids = fit_prompt(tokenizer, prompt, prompt_room)
        if messages is not None:  # rendered again: the answers as they follow the new prompt
            prompt_ids, answers = _encode(tokenizer, messages, completions)
    room = cutoff_len - len(prompt_ids)  # what the prompt leaves: at least its share
    return prompt_ids, [a[:room] for a in answers], True


def budget(prompt_len: int, answer_len: int, cutoff_len: int, truncation: str) -> tuple[int, int]:
    """(prompt room, answer room) for a prompt and an answer that do not fit together.

    split (LLaMA-Factory's `infer_seqlen`): an answer shorter than half of cutoff_len is kept
    whole, so is such a prompt; when both are longer, cutoff_len is divided in proportion to
    their lengths. keep_prompt: the answer gets what the prompt leaves. Either way each side
    keeps at least min(its length, cutoff_len // 4) tokens (the floor), so neither vanishes.
    """
    floor = cutoff_len // 4
    if truncation == "keep_prompt":
        answer_room = cutoff_len - prompt_len
    elif answer_len * 2 < cutoff_len:
        answer_room = answer_len
    elif prompt_len * 2 < cutoff_len:
        answer_room = cutoff_len - prompt_len
    else:
        answer_room = int(cutoff_len * answer_len / (prompt_len + answer_len))
    answer_room = max(answer_room, min(answer_len, floor))
    answer_room = min(answer_room, answer_len, cutoff_len - min(prompt_len, floor))
    return cutoff_len - answer_room, answer_room


def fit_prompt(tokenizer, prompt: list[dict], room: int) -> tuple[list[dict] | None, list[int]]:
    """(messages, ids) of the prompt cut to `room` tokens, keeping its end: the earliest turns
    go first (a leading system message stays), then the start of the last user turn; a prompt
    whose system message alone overflows keeps its last `room` ids (messages None)."""
    system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    turns = prompt[len(system) :]
    starts = [i for i, m in enumerate(turns) if m["role"] == "user"] or [0]
    for start in starts:  # fewest turns dropped first
        messages = [*system, *turns[start:]]
        ids = _prompt_ids(tokenizer, messages)
        if len(ids) <= room:
            return messages, ids
    last = dict(turns[-1]) if turns else None
    if last is not None and isinstance(last.get("content"), str):
        text = last["content"]
        fixed = len(_prompt_ids(tokenizer, [*system, {**last, "content": ""}]))
        keep = room - fixed
        content_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        while keep > 0:
            tail = tokenizer.decode(content_ids[-keep:]).lstrip("\ufffd")
            messages = [*system, {**last, "content": tail}]
            ids = _prompt_ids(tokenizer, messages)
            if len(ids) <= room and tail.strip():
                return messages, ids
            keep -= max(1, len(ids) - room)
    return None, _prompt_ids(tokenizer, prompt)[-room:]


def _prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    text = render_chat(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _encode(
    tokenizer, prompt: list[dict], completions: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """The whole prompt's ids and each completion's, as rendered after it."""
    prompt_text = render_chat(tokenizer, prompt, add_generation_prompt=True)
    prompt_ids, answers = None, []
    for completion in completions:
        full = render_chat(tokenizer, [*prompt, {"role": "assistant", "content": completion}])
        if not full.startswith(prompt_text):
            raise TemplateError(
                "the chat template renders the prompt differently once the answer follows, so "
                "the answer cannot be separated; use a template without that "
                "(model.chat_template)"
            )
        encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        cut = next(
            (i for i, (start, _) in enumerate(offsets) if start >= len(prompt_text)), len(ids)
        )
        prompt_ids = prompt_ids or ids[:cut]
        answers.append(ids[cut:])
    return prompt_ids or [], answers


def tokenize_records(
    records: Iterable[PreferenceRecord],
    tokenizer,
    cutoff_len: int,
    paired: bool,
    on_error: str = "stop",
    reject: RejectSink | None = None,
    truncation: str = "split",
) -> PreferenceData:
    """TRL-ready examples. paired=False (KTO) also accepts pairs: chosen becomes a desirable
    completion and rejected an undesirable one. Records longer than cutoff_len are truncated
    (`fit_pair`) and counted in stats["truncated"], never rejected."""
    examples: list[dict] = []
    stats = {"truncated": 0, "unusable": 0, "pairs": 0, "desirable": 0, "undesirable": 0}
    for record in records:
        if paired and not record.is_pair:
            raise DataError(
                f"{record.source}:{record.line}: a KTO record (completion with a label) given to "
                "a pairwise stage; pairs need chosen and rejected (train.stage=kto reads both)"
            )
        try:
            examples += _examples(record, tokenizer, cutoff_len, paired, stats, truncation)
        except ValueError as e:
            if isinstance(e, TemplateError) or on_error == "stop" or reject is None:
                raise DataError(f"{record.source}:{record.line}: {e}") from None
            stats["unusable"] += 1
            reject(record.source, record.line, str(e), {"prompt": record.prompt})
    stats["examples"] = len(examples)
    return PreferenceData(examples, stats)


def _examples(record, tokenizer, cutoff_len, paired, stats, truncation) -> list[dict]:
    if paired:  # chosen and rejected share one prompt and one answer budget
        prompt_ids, (chosen, rejected), cut = fit_pair(
            tokenizer, record.prompt, [record.chosen, record.rejected], cutoff_len, truncation
        )
        stats["truncated"] += cut
        stats["pairs"] += 1
        return [{"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected}]
    items = (
        [(record.chosen, True), (record.rejected, False)]
        if record.is_pair
        else [(record.completion, record.label)]
    )
    out = []
    for text, label in items:
        prompt_ids, completion_ids, cut = split_ids(
            tokenizer, record.prompt, text, cutoff_len, truncation
        )
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
    truncation: str = "split",
) -> PreferenceData:
    """Read and tokenize; every record read is kept (truncated to data.cutoff_len by
    train.preference.truncation where longer) or passed to `reject`."""
    records, read = read_preference_records(sources, cfg.format, cfg.columns, cfg.on_error, reject)
    if cfg.max_samples:
        records = records[: cfg.max_samples]
    data = tokenize_records(
        records, tokenizer, cfg.cutoff_len, paired, cfg.on_error, reject, truncation
    )
    data.stats = {
        "read": read["read"],
        "rejected": read["rejected"] + data.stats["unusable"],
        **{k: v for k, v in data.stats.items() if k != "unusable"},
    }
    if not data.examples:
        raise DataError(f"no usable preference records in {[str(s) for s in sources]}")
    return data
