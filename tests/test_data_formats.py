"""Formats: alpaca, sharegpt and openai records become validated chat conversations."""

import json
import re
from pathlib import Path

import pytest
from conftest import shared_file

from tunesmith.data.formats import (
    FORMATS,
    Conversation,
    RecordError,
    detect_format,
    load_conversations,
    to_conversation,
)
from tunesmith.data.readers import RawRecord
from tunesmith.utils.errors import ConfigError, DataError


def _rec(data: dict) -> RawRecord:
    return RawRecord("mem.json", 7, data)


def _msgs(data: dict, fmt: str, columns: dict | None = None) -> list[dict]:
    return to_conversation(_rec(data), fmt, columns).messages


def _reason(data: dict, fmt: str, columns: dict | None = None) -> str:
    with pytest.raises(RecordError) as err:
        to_conversation(_rec(data), fmt, columns)
    return str(err.value)


def _u(text: str) -> dict:
    return {"role": "user", "content": text}


def _a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _s(text: str) -> dict:
    return {"role": "system", "content": text}


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


# --- conversion -------------------------------------------------------------------------


def test_alpaca_full_record():
    data = {
        "system": "Be brief.",
        "history": [["q1", "a1"], ["q2", "a2"]],
        "instruction": "Translate",
        "input": "bonjour",
        "output": "hello",
    }
    assert _msgs(data, "alpaca") == [
        _s("Be brief."),
        _u("q1"),
        _a("a1"),
        _u("q2"),
        _a("a2"),
        _u("Translate\nbonjour"),
        _a("hello"),
    ]


def test_alpaca_minimal_record_and_empty_optional_fields():
    data = {"instruction": "Hi", "input": "  ", "output": "Hello", "system": "", "history": []}
    assert _msgs(data, "alpaca") == [_u("Hi"), _a("Hello")]
    conv = to_conversation(_rec({"instruction": "Hi", "output": "Hello"}), "alpaca")
    assert conv == Conversation([_u("Hi"), _a("Hello")], "mem.json", 7)


def test_alpaca_history_as_json_text_is_decoded():
    data = {"instruction": "q2", "output": "a2", "history": '[["q1", "a1"]]'}
    assert _msgs(data, "alpaca") == [_u("q1"), _a("a1"), _u("q2"), _a("a2")]


def test_sharegpt_with_system_turn_and_alias_roles():
    data = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "a1"},
            {"from": "user", "value": "q2"},
            {"from": "assistant", "value": "a2"},
        ]
    }
    assert _msgs(data, "sharegpt") == [_s("S"), _u("q1"), _a("a1"), _u("q2"), _a("a2")]


def test_sharegpt_top_level_system_field():
    data = {
        "system": "S",
        "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
    }
    assert _msgs(data, "sharegpt") == [_s("S"), _u("q"), _a("a")]


def test_openai_messages():
    data = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ]
    }
    assert _msgs(data, "openai") == [_s("S"), _u("q"), _a("a")]


def test_empty_system_prompt_is_dropped():
    data = {"messages": [{"role": "system", "content": " "}, _u("q"), _a("a")]}
    assert _msgs(data, "openai") == [_u("q"), _a("a")]


# --- detection and columns ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"conversations": []}, "sharegpt"),
        ({"messages": []}, "openai"),
    ],
)
def test_detect_format(data, fmt):
    assert detect_format(data) == fmt


def test_detect_format_failure_lists_keys_and_expectations():
    with pytest.raises(RecordError) as err:
        detect_format({"text": "x", "label": 1})
    message = str(err.value)
    assert message.startswith("cannot detect format:")
    assert "keys found: ['label', 'text']" in message
    assert "alpaca (instruction/output)" in message
    assert "sharegpt (conversations)" in message
    assert "openai (messages)" in message


def test_alpaca_column_remapping_and_detection():
    columns = {"instruction": "prompt", "output": "response", "system": "sys"}
    data = {"prompt": "q", "response": "a", "sys": "S"}
    assert detect_format(data, columns) == "alpaca"
    assert _msgs(data, "alpaca", columns) == [_s("S"), _u("q"), _a("a")]
    assert "field 'response' is missing or empty" in _reason({"prompt": "q"}, "alpaca", columns)


def test_sharegpt_column_and_tag_remapping():
    columns = {
        "conversations": "messages",
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "question",
        "assistant_tag": "answer",
    }
    data = {"messages": [{"role": "question", "content": "q"}, {"role": "answer", "content": "a"}]}
    assert _msgs(data, "sharegpt", columns) == [_u("q"), _a("a")]


def test_unknown_column_name_is_rejected_with_allowed_names():
    with pytest.raises(
        ConfigError, match=r"data.columns: unknown column name.*'question'.*allowed"
    ):
        to_conversation(_rec({"instruction": "q", "output": "a"}), "alpaca", {"question": "q"})


# --- validation reasons ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"input": "x", "output": "o"}, "field 'instruction' is missing or empty"),
        ({"instruction": "   ", "output": "o"}, "field 'instruction' is missing or empty"),
        ({"instruction": "i", "output": ""}, "field 'output' is missing or empty"),
        ({"instruction": "i", "output": ["o1", "o2"]}, "field 'output' must be a string, got list"),
        ({"instruction": "i", "output": "o", "history": [["q"]]}, "history item 1: expected a"),
        ({"instruction": "i", "output": "o", "history": [["q", " "]]}, "turn 2: empty assistant"),
    ],
)
def test_alpaca_reasons(data, reason):
    assert reason in _reason(data, "alpaca")


def _sg(*turns: tuple[str, object]) -> dict:
    return {"conversations": [{"from": r, "value": v} for r, v in turns]}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            _sg(("human", "q"), ("gpt", "a"), ("observation", "{}"), ("gpt", "b")),
            "turn 3: a tool result must follow the assistant's call",
        ),
        (_sg(("human", "q"), ("bot", "a")), "unsupported role 'bot' in turn 2; expected one of"),
        (_sg(("human", "q"), ("human", "q2")), "turn 2: expected role 'assistant', got 'user'"),
        (
            _sg(
                ("gpt", "a"),
            ),
            "turn 1: expected role 'user', got 'assistant'",
        ),
        (
            _sg(("human", "q"), ("gpt", "a"), ("human", "q2")),
            "turn 3: conversation ends with a user turn; expected a final assistant turn",
        ),
        (_sg(("human", "q"), ("gpt", " \n")), "turn 2: empty assistant content"),
        (_sg(("human", 3), ("gpt", "a")), "turn 1: content must be a string, got int"),
        (
            _sg(("human", "q"), ("system", "S"), ("gpt", "a")),
            "turn 2: a system message is only allowed as the first turn",
        ),
        ({"conversations": []}, "field 'conversations' is missing or empty"),
        ({"conversations": {"from": "human"}}, "field 'conversations' must be a list, got dict"),
        (
            {"conversations": [{"role": "user", "content": "q"}]},
            "turn 1: expected an object with 'from' and 'value'",
        ),
    ],
)
def test_sharegpt_reasons(data, reason):
    assert _reason(data, "sharegpt").startswith(reason)


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([_u("q"), {"role": "tool", "content": "r"}], "turn 2: a tool result must follow"),
        ([_u("q"), _u("q2"), _a("a")], "turn 2: expected role 'assistant', got 'user'"),
        ([_s("S"), _u("q")], "turn 2: conversation ends with a user turn"),
        ([_s("S")], "no user/assistant turns"),
        (
            [{"role": "user", "content": [{"type": "text", "text": "q"}]}, _a("a")],
            "turn 1: content must be a string, got list (multimodal content is not supported)",
        ),
        ([{"role": "user"}, _a("a")], "turn 1: expected an object with 'role' and 'content'"),
    ],
)
def test_openai_reasons(messages, reason):
    assert _reason({"messages": messages}, "openai").startswith(reason)


# --- load_conversations ------------------------------------------------------------------


def test_load_detects_format_per_file_and_counts(tmp_path):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "q", "output": "a"}] * 2), encoding="utf-8")
    openai = _jsonl(tmp_path / "b.jsonl", [{"messages": [_u("q"), _a("a")]}])
    conversations, stats = load_conversations([alpaca, openai])
    assert [c.messages for c in conversations] == [[_u("q"), _a("a")]] * 3
    assert [(c.source, c.line) for c in conversations][-1] == (openai, 1)
    assert stats == {
        "read": 3,
        "kept": 3,
        "rejected": 0,
        "formats": {str(alpaca): "alpaca", openai: "openai"},
    }


def test_load_stop_raises_data_error_with_file_and_line(tmp_path):
    path = _jsonl(
        tmp_path / "d.jsonl",
        [{"instruction": "q", "output": "a"}, {"instruction": "q", "output": ""}],
    )
    with pytest.raises(DataError) as err:
        load_conversations([path])
    assert str(err.value) == f"{path}:2: field 'output' is missing or empty"


def test_load_skip_calls_reject_with_record_and_reason(tmp_path):
    rows = [
        {"instruction": "q1", "output": "a1"},
        {"instruction": "", "output": "a2"},
        {"instruction": "q3", "output": "a3"},
        {"instruction": "q4"},
    ]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    rejected: list[tuple[RawRecord, str]] = []
    conversations, stats = load_conversations(
        [path], on_error="skip", reject=lambda r, why: rejected.append((r, why))
    )
    assert [c.messages[0]["content"] for c in conversations] == ["q1", "q3"]
    assert [(r.line, r.data, why) for r, why in rejected] == [
        (2, rows[1], "field 'instruction' is missing or empty"),
        (4, rows[3], "field 'output' is missing or empty"),
    ]
    assert stats["read"] == 4 and stats["kept"] == 2 and stats["rejected"] == 2
    assert stats["read"] == stats["kept"] + stats["rejected"]


def test_load_explicit_format_overrides_detection(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "output": "a"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'conversations' is missing"):
        load_conversations([path], fmt="sharegpt")


def test_load_undetectable_file_stops_even_when_skipping(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "plain"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: cannot detect format"):
        load_conversations([path], on_error="skip")


def test_load_csv_sharegpt(tmp_path):
    turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a\nb"}]
    cell = json.dumps(turns).replace('"', '""')
    path = tmp_path / "d.csv"
    path.write_text(f'system,conversations\nS,"{cell}"\n', encoding="utf-8")
    conversations, stats = load_conversations([path])
    assert conversations[0].messages == [_s("S"), _u("q"), _a("a\nb")]
    assert stats["formats"] == {str(path): "sharegpt"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fmt": "chatml"}, re.escape("allowed: auto, " + ", ".join(FORMATS))),
        ({"on_error": "ignore"}, "allowed: stop, skip"),
        ({"columns": {"prompt": "x"}}, "unknown column name"),
    ],
)
def test_load_invalid_arguments(tmp_path, kwargs, match):
    with pytest.raises((ValueError, ConfigError), match=match):
        load_conversations([], **kwargs)


# --- interop with LLaMA-Factory's demo data ----------------------------------------------


@pytest.mark.parametrize(("name", "count"), [("alpaca_en_demo.json", 999), ("identity.json", 91)])
def test_llamafactory_alpaca_demos_load_whole(name, count):
    path = shared_file(name)
    conversations, stats = load_conversations([path])
    assert stats == {
        "read": count,
        "kept": count,
        "rejected": 0,
        "formats": {str(path): "alpaca"},
    }
    assert all(c.messages[-1]["role"] == "assistant" for c in conversations)
    assert conversations[0].line == 2  # the array's first '{'


def test_llamafactory_glaive_toolcall_reads_calls_results_and_tools():
    path = shared_file("glaive_toolcall_en_demo.json")
    records = json.loads(path.read_text(encoding="utf-8"))
    with_calls = sum(any(t["from"] == "function_call" for t in r["conversations"]) for r in records)
    conversations, stats = load_conversations([path])
    assert stats["formats"] == {str(path): "sharegpt"}
    assert stats["read"] == stats["kept"] == 300 and stats["rejected"] == 0
    called = [c for c in conversations if any(m.get("tool_calls") for m in c.messages)]
    assert len(called) == with_calls > 0
    first = called[0]
    call = next(m for m in first.messages if m.get("tool_calls"))["tool_calls"][0]
    assert call == {
        "type": "function",
        "function": {
            "name": "search_recipes",
            "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]},
        },
    }
    result = first.messages[
        first.messages.index(next(m for m in first.messages if m.get("tool_calls"))) + 1
    ]
    assert result["role"] == "tool" and result["name"] == "search_recipes"
    assert first.tools[0]["type"] == "function"
    assert first.tools[0]["function"]["name"] == "search_recipes"
