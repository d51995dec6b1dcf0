"""Normalize alpaca, sharegpt and openai records into chat conversations.

One validated shape comes out whatever went in: an optional leading system message, then
user/assistant turns alternating and ending with the assistant. Column names follow
LLaMA-Factory's `dataset_info.json` conventions so its registries can be read unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data import tools as tool_data
from tunesmith.data.readers import BadRecord, RawRecord, scan_records
from tunesmith.utils.errors import ConfigError, DataError

FORMATS = ("alpaca", "sharegpt", "openai")
ON_ERROR = ("stop", "skip")
# Canonical names a `columns` mapping may rename, per format.
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "sharegpt": (
        "conversations",
        "system",
        "role_tag",
        "content_tag",
        "user_tag",
        "assistant_tag",
        "system_tag",
        "function_tag",
        "observation_tag",
        "tools",
    ),
    "openai": ("messages", "tools"),
}
_ALL_COLUMNS = tuple(dict.fromkeys(n for names in COLUMN_NAMES.values() for n in names))
_DEFAULTS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
    "function_tag": "function_call",
    "observation_tag": "observation",
}
_TOOL_ROLES = frozenset(
    {"function_call", "observation", "tool", "function", "tool_call", "ipython"}
)

Turn = tuple[int, str, object]  # (1-based turn number as the user sees it, role, content)


@dataclass
class Conversation:
    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]
    source: str
    line: int
    # the functions the model may call (OpenAI's shape); tool conversations also hold assistant
    # messages with "tool_calls" and "tool" messages (data/tools.py)
    tools: list[dict] | None = None


class RecordError(Exception):
    """A malformed record; str(e) is the reason (the caller prefixes `file:line`)."""


def check_columns(columns: dict[str, str] | None) -> dict[str, str]:
    """Return `columns` (or {}), rejecting names that no format knows."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(_ALL_COLUMNS))
    if unknown:
        allowed = ", ".join(_ALL_COLUMNS)
        raise ConfigError(f"data.columns: unknown column name(s) {unknown}; allowed: {allowed}")
    return columns


def detect_format(
    data: dict, columns: dict[str, str] | None = None, *, text: bool = False, beside: str = ""
) -> str:
    """A record's format from its keys (`columns` renames them): openai, sharegpt or alpaca;
    with text=True a string 'text' field makes it "text" (plain text, classification). The one
    detection for every reader; `beside` names what else the caller expects (chosen/rejected)."""
    col = _namer(check_columns(columns))
    if col("messages") in data:
        return "openai"
    if col("conversations") in data:
        return "sharegpt"
    # `instruction` alone suffices: a missing output is then reported as such, not as
    # an unknown format.
    if col("instruction") in data:
        return "alpaca"
    if text and isinstance(data.get("text"), str):
        return "text"
    keys = sorted(data)
    shown = f"{keys[:10]}" + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
    raise RecordError(
        f"cannot detect format: keys found: {shown}; expected alpaca "
        "(instruction/output), sharegpt (conversations) or openai (messages)"
        + (f" {beside}" if beside else "")
        + ("; plain text trains with train.stage=pt" if keys == ["text"] else "")
    )


def to_conversation(
    record: RawRecord, fmt: str, columns: dict[str, str] | None = None
) -> Conversation:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    col = _namer(check_columns(columns))
    if fmt != "alpaca" and _has_tools(record.data, fmt, col):
        messages, tools = _tool_conversation(record.data, fmt, col)
        return Conversation(messages, record.source, record.line, tools)
    convert = {"alpaca": _alpaca, "sharegpt": _sharegpt, "openai": _openai}[fmt]
    system, turns = convert(record.data, col)
    return Conversation(_validate(system, turns), record.source, record.line)


def load_conversations(
    paths: Iterable[str | Path],
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    on_error: str = "stop",
    reject: Callable[[RawRecord, str], None] | None = None,
) -> tuple[list[Conversation], dict]:
    """Read every file into conversations.

    With on_error="skip", a malformed record goes to `reject(record, reason)` instead of
    stopping the run; so does a record the reader could not parse where it can go on past it
    (a JSON line, a CSV row: `record.data` is then its text as read). A file the reader cannot
    go on in (a syntax error in a JSON array, a missing file) always stops. Stats: read ==
    kept + rejected.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: auto, {', '.join(FORMATS)}")
    if on_error not in ON_ERROR:
        raise ValueError(f"unknown on_error {on_error!r}; allowed: {', '.join(ON_ERROR)}")
    columns = check_columns(columns)
    conversations: list[Conversation] = []
    stats: dict = {"read": 0, "kept": 0, "rejected": 0, "formats": {}}
    for path in paths:
        file_fmt = None if fmt == "auto" else fmt
        stats["formats"][str(path)] = file_fmt
        for record in scan_records(path):
            if isinstance(record, BadRecord):
                if on_error == "stop" or record.fatal:
                    raise record.error()
                stats["read"] += 1
                stats["rejected"] += 1
                if reject is not None:
                    reject(RawRecord(record.source, record.line, record.text), record.reason)
                continue
            if file_fmt is None:
                # Detected once per file: a mixed-format file is an error, not a guess per row.
                # An undetectable first record stops even with "skip": skipping would
                # otherwise drop the whole file.
                try:
                    file_fmt = detect_format(record.data, columns)
                except RecordError as e:
                    raise DataError(f"{record.where}: {e}") from None
                stats["formats"][str(path)] = file_fmt
            stats["read"] += 1
            try:
                conversations.append(to_conversation(record, file_fmt, columns))
                stats["kept"] += 1
            except RecordError as e:
                if on_error == "stop":
                    raise DataError(f"{record.where}: {e}") from None
                stats["rejected"] += 1
                if reject is not None:
                    reject(record, str(e))
    return conversations, stats


# --- per-format conversion: each returns (system text or None, turns) -------------------


def _namer(columns: dict[str, str]) -> Callable[[str], str]:
    return lambda name: columns.get(name, _DEFAULTS.get(name, name))


def _string_field(data: dict, key: str, required: bool) -> str:
    value = data.get(key)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise RecordError(f"field '{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RecordError(f"field '{key}' is missing or empty")
    return value


def _list_field(data: dict, key: str, required: bool) -> list:
    value = data.get(key)
    if isinstance(value, str) and value.strip():
        # CSV cells or stringified columns under a renamed key: lists arrive as JSON text.
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError(f"field '{key}' is a string but not valid JSON: {e.msg}") from None
    if value is None or value == "":
        value = []
    if not isinstance(value, list):
        raise RecordError(f"field '{key}' must be a list, got {type(value).__name__}")
    if required and not value:
        raise RecordError(f"field '{key}' is missing or empty")
    return value


def _alpaca(data: dict, col: Callable[[str], str]) -> tuple[str | None, list[Turn]]:
    instruction = _string_field(data, col("instruction"), required=True)
    extra = _string_field(data, col("input"), required=False)
    output = _string_field(data, col("output"), required=True)
    turns: list[Turn] = []
    for i, pair in enumerate(_list_field(data, col("history"), required=False), start=1):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RecordError(f"history item {i}: expected a [question, answer] pair")
        turns += [(len(turns) + 1, "user", pair[0]), (len(turns) + 2, "assistant", pair[1])]
    # LLaMA-Factory convention: the input follows the instruction on a new line.
    prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
    turns += [(len(turns) + 1, "user", prompt), (len(turns) + 2, "assistant", output)]
    return _string_field(data, col("system"), required=False) or None, turns


def _sharegpt(data: dict, col: Callable[[str], str]) -> tuple[str | None, list[Turn]]:
    role_tag, content_tag = col("role_tag"), col("content_tag")
    roles = {
        col("user_tag"): "user",
        "user": "user",
        col("assistant_tag"): "assistant",
        "assistant": "assistant",
        col("system_tag"): "system",
    }
    turns: list[Turn] = []
    for n, turn in enumerate(_list_field(data, col("conversations"), required=True), start=1):
        if not isinstance(turn, dict) or role_tag not in turn or content_tag not in turn:
            raise RecordError(
                f"turn {n}: expected an object with '{role_tag}' and '{content_tag}', "
                f"got {_preview(turn)}"
            )
        turns.append((n, _role(turn[role_tag], roles, n), turn[content_tag]))
    system = _string_field(data, col("system"), required=False) or None
    if turns and turns[0][1] == "system":
        # As in LLaMA-Factory, a leading system turn wins over the `system` field.
        system = _system_text(turns.pop(0))
    return system, turns


def _openai(data: dict, col: Callable[[str], str]) -> tuple[str | None, list[Turn]]:
    roles = {"system": "system", "user": "user", "assistant": "assistant"}
    turns: list[Turn] = []
    for n, msg in enumerate(_list_field(data, col("messages"), required=True), start=1):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise RecordError(
                f"turn {n}: expected an object with 'role' and 'content', got {_preview(msg)}"
            )
        turns.append((n, _role(msg["role"], roles, n), msg["content"]))
    system = None
    if turns and turns[0][1] == "system":
        system = _system_text(turns.pop(0))
    return system, turns


def _has_tools(data: dict, fmt: str, col: Callable[[str], str]) -> bool:
    if data.get(col("tools")) not in (None, "", "[]", []):
        return True
    if fmt == "openai":
        turns = data.get(col("messages"))
        is_tool = lambda t: t.get("tool_calls") or t.get("role") == "tool"  # noqa: E731
    else:
        turns, role_tag = data.get(col("conversations")), col("role_tag")
        tags = (col("function_tag"), col("observation_tag"))
        is_tool = lambda t: t.get(role_tag) in tags  # noqa: E731
    return isinstance(turns, list) and any(isinstance(t, dict) and is_tool(t) for t in turns)


def _tool_conversation(data: dict, fmt: str, col: Callable[[str], str]):
    """A conversation with tool calls and results (data/tools.py): its messages and tools."""
    try:
        tools = tool_data.normalize_tools(data.get(col("tools")))
        system = _string_field(data, col("system"), required=False) or None
        messages = []
        if fmt == "openai":
            for n, msg in enumerate(_list_field(data, col("messages"), required=True), start=1):
                if not isinstance(msg, dict) or "role" not in msg:
                    got = _preview(msg)
                    raise RecordError(f"turn {n}: expected an object with 'role', got {got}")
                if msg.get("tool_calls") or msg["role"] == "tool":
                    messages.append(tool_data.openai_tool_message(msg))
                else:
                    role = _role(msg["role"], {r: r for r in ("system", "user", "assistant")}, n)
                    messages.append({"role": role, "content": msg.get("content")})
        else:
            role_tag, content_tag = col("role_tag"), col("content_tag")
            roles = {
                col("user_tag"): "user",
                col("assistant_tag"): "assistant",
                col("system_tag"): "system",
            }
            calls, results = col("function_tag"), col("observation_tag")
            for n, turn in enumerate(_list_field(data, col("conversations"), True), start=1):
                if not isinstance(turn, dict) or role_tag not in turn or content_tag not in turn:
                    raise RecordError(
                        f"turn {n}: expected an object with '{role_tag}' and '{content_tag}', "
                        f"got {_preview(turn)}"
                    )
                role, content = turn[role_tag], turn[content_tag]
                if role in (calls, results):
                    messages.append(tool_data.sharegpt_tool_turn(role, content, role == results))
                else:
                    messages.append({"role": _role(role, roles, n), "content": content})
        if messages and messages[0]["role"] == "system":
            system = messages.pop(0)["content"] or None
        for n, m in enumerate(messages, start=1):
            if m["role"] in ("user", "assistant") and not isinstance(m.get("content"), str):
                raise RecordError(f"turn {n}: content must be a string, got {_type(m['content'])}")
        head = [{"role": "system", "content": system}] if system else []
        return tool_data.check_tool_turns(head + messages), tools
    except tool_data.ToolDataError as e:
        raise RecordError(str(e)) from None


def _role(raw: object, roles: dict[str, str], n: int) -> str:
    if isinstance(raw, str) and raw in roles:
        return roles[raw]
    if isinstance(raw, str) and raw in _TOOL_ROLES:
        raise RecordError(
            f"unsupported role {raw!r} in turn {n}: tool turns are read as LLaMA-Factory's "
            "function_call/observation (sharegpt) or OpenAI's tool_calls/tool (messages)"
        )
    allowed = ", ".join(repr(r) for r in dict.fromkeys(roles))
    raise RecordError(f"unsupported role {raw!r} in turn {n}; expected one of {allowed}")


def _system_text(turn: Turn) -> str | None:
    n, _, content = turn
    if not isinstance(content, str):
        raise RecordError(f"turn {n}: system content must be a string, got {_type(content)}")
    return content if content.strip() else None  # an empty system prompt says nothing


def _validate(system: str | None, turns: list[Turn]) -> list[dict]:
    """Check alternation and contents; return the messages in the canonical shape."""
    if not turns:
        raise RecordError("no user/assistant turns")
    messages = [{"role": "system", "content": system}] if system else []
    for i, (n, role, content) in enumerate(turns):
        expected = ("user", "assistant")[i % 2]
        if role == "system":
            raise RecordError(f"turn {n}: a system message is only allowed as the first turn")
        if role != expected:
            raise RecordError(f"turn {n}: expected role '{expected}', got '{role}'")
        if not isinstance(content, str):
            raise RecordError(f"turn {n}: content must be a string, got {_type(content)}")
        if not content.strip():
            raise RecordError(f"turn {n}: empty {role} content")
        messages.append({"role": role, "content": content})
    if turns[-1][1] != "assistant":
        raise RecordError(
            f"turn {turns[-1][0]}: conversation ends with a user turn; "
            "expected a final assistant turn"
        )
    return messages


def _type(value: object) -> str:
    # Lists of parts are how OpenAI writes multimodal content: say why it is refused.
    name = type(value).__name__
    return f"{name} (multimodal content is not supported)" if isinstance(value, list) else name


def _preview(value: object, limit: int = 60) -> str:
    if isinstance(value, str):
        text = repr(value)
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
