"""Prompt records for the online RL stages (grpo, ppo): a chat prompt and, where given, the
reference answer the reward functions compare with.

Accepted records (one file may hold one kind):
- `{"prompt": "text" or [messages], "answer": ...}` (TRL's prompt-only layout)
- `{"question": ..., "answer": ...}` (GSM8K; the answer may end in `#### <n>`)
- alpaca (`instruction`, `input`, `system`; `output` is the answer)
- sharegpt / openai conversations: a final assistant turn is the answer, the rest the prompt.
Other fields are kept and handed to the reward functions by name. A record that fits none is
rejected with its reason (or stops the run with data.on_error=stop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from tunesmith.data.formats import RecordError, detect_format, to_conversation
from tunesmith.data.readers import BadRecord, RawRecord, scan_records
from tunesmith.utils.errors import DataError

_ROLES = ("system", "user", "assistant")


def to_prompt(record: RawRecord) -> dict:
    """{"prompt": messages ending with a user turn, "answer": str | None, **other fields}."""
    data = record.data
    if "prompt" in data or "question" in data:
        key = "prompt" if "prompt" in data else "question"
        prompt = _messages(data[key], key)
        rest = {k: v for k, v in data.items() if k != key}
        answer = rest.pop("answer", None)
    else:
        fmt = detect_format(data)  # alpaca, sharegpt or openai; RecordError otherwise
        if fmt == "alpaca" and not data.get("output"):
            data = {**data, "output": "-"}  # a prompt without its answer
            answerless = True
        else:
            answerless = False
        try:
            messages = to_conversation(record, fmt).messages
        except RecordError as e:
            if "ends with a user turn" not in str(e):
                raise
            messages = to_conversation(_with_dummy_answer(record, fmt), fmt).messages
            answerless = True
        prompt, answer = messages[:-1], None if answerless else messages[-1]["content"]
        drop = {"instruction", "input", "output", "system", "history", "conversations", "messages"}
        rest = {k: v for k, v in data.items() if k not in drop}
    if answer is not None and not isinstance(answer, str | int | float):
        raise RecordError(f"field 'answer' must be text or a number, got {type(answer).__name__}")
    return {"prompt": prompt, "answer": None if answer is None else str(answer), **rest}


def _with_dummy_answer(record: RawRecord, fmt: str) -> RawRecord:
    data = dict(record.data)
    if fmt == "openai":
        data["messages"] = [*data["messages"], {"role": "assistant", "content": "-"}]
    else:
        data["conversations"] = [*data["conversations"], {"from": "gpt", "value": "-"}]
    return RawRecord(record.source, record.line, data)


def _messages(value, key: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(f"field '{key}' is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RecordError(f"field '{key}' must be text or a list of messages")
    for n, m in enumerate(value, start=1):
        if not (
            isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str)
        ):
            raise RecordError(
                f"{key} message {n}: expected {{'role', 'content'}} with a role of "
                f"{', '.join(_ROLES)}"
            )
    if value[-1]["role"] != "user":
        raise RecordError(f"field '{key}' must end with a user message")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def read_prompts(
    paths: Iterable[str | Path],
    on_error: str = "stop",
    reject: Callable[[RawRecord, str], None] | None = None,
) -> tuple[list[dict], dict]:
    """Every prompt record of the files, each with "_where": (file, line) for the rejects
    of later checks; stats read == kept + rejected."""
    prompts: list[dict] = []
    stats = {"read": 0, "kept": 0, "rejected": 0}
    for path in paths:
        for record in scan_records(path):
            stats["read"] += 1
            if isinstance(record, BadRecord):
                if on_error == "stop" or record.fatal:
                    raise record.error()
                stats["rejected"] += 1
                if reject:
                    reject(RawRecord(record.source, record.line, record.text), record.reason)
                continue
            try:
                prompts.append({**to_prompt(record), "_where": (record.source, record.line)})
                stats["kept"] += 1
            except RecordError as e:
                if on_error == "stop":
                    raise DataError(f"{record.where}: {e}") from None
                stats["rejected"] += 1
                if reject:
                    reject(record, str(e))
    return prompts, stats
