"""Tool calling on /v1/chat/completions: `tools`, `tool_choice`, and `tool_calls` back.

A request's tools reach the template as a `ToolChat` (data/render.py), so the prompt is the one
training rendered. The reply is read back by the template's convention
(data/tools.parse_tool_calls): its calls become OpenAI `tool_calls` with `finish_reason:
"tool_calls"`, the rest stays `content`. Streams send text deltas until a call opens, then each
call as OpenAI streams it: a first delta with its index, id, type and name (arguments ""),
then its arguments as a string; text after the calls is sent as content when the reply ends.

tool_choice: "auto" (the default with tools) and "none" (the tools are not shown); "required"
and a named function would need constrained decoding, which this server does not do, so they
are refused with one sentence instead of being silently not enforced.
"""

from __future__ import annotations

import json
import uuid

from tunesmith.data.render import ToolChat
from tunesmith.data.tools import (
    CALL_CLOSE,
    CALL_OPEN,
    ToolDataError,
    call,
    normalize_tools,
    parse_tool_calls,
    tool_convention,
)
from tunesmith.serve.protocol import APIError


def _invalid(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code="invalid_value")


def request_messages(messages, conversation: list[dict]) -> list[dict]:
    """The request's conversation (messages' as_dict) with OpenAI's tool fields in the
    canonical shape templates render: assistant tool_calls with their JSON-text arguments
    parsed, a tool result's name (from its call when the client left it out)."""
    out, names = [], {}
    for n, (m, turn) in enumerate(zip(messages, conversation, strict=True)):
        turn = dict(turn)
        if turn.get("content") is None:
            turn["content"] = ""
        if m.tool_calls:
            try:
                turn["tool_calls"] = [
                    call(c["function"]["name"], c["function"].get("arguments") or "{}")
                    for c in m.tool_calls
                ]
            except (ToolDataError, KeyError, TypeError, AttributeError) as e:
                raise _invalid(f"messages.{n}.tool_calls", f"not a function call: {e}") from None
            names.update({c.get("id"): c["function"]["name"] for c in m.tool_calls})
        if m.role == "tool":
            turn["name"] = m.name or names.get(m.tool_call_id, "")
        out.append(turn)
    return out


def with_tools(conversation: list[dict], tools, tool_choice, tokenizer) -> list[dict]:
    """The conversation to render: a ToolChat when tools are offered (tool_choice auto)."""
    if tool_choice not in (None, "auto", "none"):
        raise _invalid(
            "tool_choice",
            "only 'auto' and 'none' are supported: 'required' and a named function need "
            "constrained decoding, which this server does not do",
        )
    if not tools or tool_choice == "none":
        return conversation
    try:
        offered = normalize_tools(tools)
    except ToolDataError as e:
        raise _invalid("tools", str(e)) from None
    from tunesmith.data.render import supports_tools

    if not supports_tools(tokenizer):
        raise _invalid(
            "tools",
            "this model's chat template does not render tools; serve it with "
            "model.chat_template=chatml_tools or a template that reads `tools`",
        )
    return ToolChat(conversation, offered)


def convention_of(tokenizer) -> str:
    return tool_convention(getattr(tokenizer, "chat_template", None))


def _openai_call(c: dict) -> dict:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
    }


def reply_message(text: str, convention: str) -> tuple[dict, bool]:
    """(the assistant message, whether it calls tools)."""
    parsed = parse_tool_calls(text, convention)
    if not parsed.calls:
        return {"role": "assistant", "content": text}, False
    message = {
        "role": "assistant",
        "content": parsed.content or None,
        "tool_calls": [_openai_call(c) for c in parsed.calls],
    }
    return message, True


class ToolStream:
    """Turns a reply's text deltas into OpenAI chat-completion deltas (content and tool_calls).
    Hermes-style tags only; another convention streams its text and sends its calls at the
    end."""

    def __init__(self, convention: str):
        self.convention = convention
        self.text = ""  # everything received
        self.sent = 0  # chars of text already sent as content
        self.calls = 0  # calls sent
        self.after_calls = ""  # text after a call: sent as content at the end

    def feed(self, delta: str) -> list[dict]:
        self.text += delta
        if self.convention != "hermes":
            return []  # sent whole at the end: the call is only known then
        out = []
        while True:
            rest = self.text[self.sent :]
            start = rest.find(CALL_OPEN)
            if start < 0:
                keep = _partial_tag(rest)  # hold back a tag's beginning ("<tool")
                if self.calls:
                    self.after_calls += rest[: len(rest) - keep]
                elif rest[: len(rest) - keep]:
                    out.append({"content": rest[: len(rest) - keep]})
                self.sent += len(rest) - keep
                return out
            if start and not self.calls:
                out.append({"content": rest[:start]})
            elif start:
                self.after_calls += rest[:start]
            end = rest.find(CALL_CLOSE, start)
            if end < 0:
                self.sent += start  # wait for the call to close
                return out
            block = rest[start : end + len(CALL_CLOSE)]
            out += self._call_deltas(block)
            self.sent += end + len(CALL_CLOSE)

    def end(self) -> list[dict]:
        rest = self.text[self.sent :]
        if self.convention != "hermes":
            parsed = parse_tool_calls(self.text, self.convention)
            if not parsed.calls:
                return [{"content": self.text}] if self.text else []
            out = [{"content": parsed.content}] if parsed.content else []
            for c in parsed.calls:
                out += self._deltas(c)
            return out
        out = []
        if rest:  # text held back, or a call left open at the end (not a call): text
            if self.calls:
                self.after_calls += rest
            else:
                out.append({"content": rest})
        if self.calls and self.after_calls.strip():
            out.append({"content": self.after_calls.strip()})
        return out

    def _call_deltas(self, block: str) -> list[dict]:
        parsed = parse_tool_calls(block, "hermes")
        if not parsed.calls:  # a broken call block stays text
            return [{"content": block}] if not self.calls else []
        out = []
        for c in parsed.calls:
            out += self._deltas(c)
        return out

    def _deltas(self, c: dict) -> list[dict]:
        index, first = self.calls, _openai_call(c)
        self.calls += 1
        head = {**first, "index": index, "function": {"name": c["name"], "arguments": ""}}
        arguments = first["function"]["arguments"]
        return [
            {"tool_calls": [head]},
            {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]},
        ]


def _partial_tag(text: str) -> int:
    """How many chars at the end of `text` could begin CALL_OPEN."""
    for n in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-n:]):
            return n
    return 0
