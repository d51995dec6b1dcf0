"""Tool calling in the data: conversations with function calls, their tools, and the template.

Two layouts are read into one canonical shape (the one Hugging Face chat templates render):
- LLaMA-Factory sharegpt: roles `function_call` (the call: `{"name", "arguments"}` JSON, or a
  list of them) and `observation` (the tool's result), and a `tools` column (a JSON list of
  `{"name", "description", "parameters"}`), as in its glaive_toolcall demo;
- OpenAI messages: an assistant message with `tool_calls` (`arguments` a JSON string), then
  `role: tool` messages, and a `tools` column of `{"type": "function", "function": {...}}`.

Canonical: `{"role": "assistant", "content": "", "tool_calls": [{"type": "function",
"function": {"name", "arguments": dict}}]}`, then `{"role": "tool", "name", "content"}`; tools as
OpenAI's `{"type": "function", "function": {...}}`. Templates render them with `tools=`
(data/render.py); the loss covers the assistant's calls and answers, never the tool results.

`CHATML_TOOLS` is a ChatML template with Hermes/Qwen2.5-style `<tool_call>` tags for models
whose own template has no tools (SmolLM2's): `model.chat_template: chatml_tools`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

TOOL_TEMPLATE_NAME = "chatml_tools"

# Qwen2.5's tool convention (TRL ships it as chat_templates/qwen2_5.jinja) with a neutral
# default system message, and none when there are neither tools nor a system message.
CHATML_TOOLS = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    '{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.'
    "\\n\\nYou are provided with function signatures within <tools></tools> XML tags:"
    '\\n<tools>" }}'
    '{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and '
    'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": '
    '<function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}'
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    '{%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}'
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    '{%- elif message.role == "assistant" %}'
    "{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    '{%- elif message.role == "tool" %}'
    '{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}'
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    '{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}'
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
NAMED_TEMPLATES = {TOOL_TEMPLATE_NAME: CHATML_TOOLS}


class ToolDataError(ValueError):
    """A malformed tool call, result or tool list; str(e) is the reason."""


def uses_tools(messages: list[dict]) -> bool:
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def normalize_tools(value) -> list[dict] | None:
    """A tools column (JSON text or a list; LF's bare functions or OpenAI's typed ones) as
    OpenAI's `[{"type": "function", "function": {...}}]`; None when empty."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ToolDataError(f"field 'tools' is not valid JSON: {e.msg}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        kind = type(value).__name__
        raise ToolDataError(f"field 'tools' must be a list of functions, got {kind}")
    tools = []
    for n, tool in enumerate(value, start=1):
        function = tool.get("function") if isinstance(tool, dict) else None
        function = function if isinstance(function, dict) else tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ToolDataError(f"tool {n}: expected an object with a 'name'")
        tools.append({"type": "function", "function": function})
    return tools


def call(name: str, arguments) -> dict:
    """One canonical tool call; `arguments` as a dict (JSON text is parsed)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            reason = f"tool call '{name}': arguments are not valid JSON: {e.msg}"
            raise ToolDataError(reason) from None
    if not isinstance(arguments, dict):
        raise ToolDataError(f"tool call '{name}': arguments must be an object")
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def parse_call_text(text: str) -> list[dict]:
    """LLaMA-Factory's function_call value: `{"name", "arguments"}` JSON or a list of them."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise ToolDataError(f"function_call is not valid JSON: {_clip(text)}") from None
    calls = value if isinstance(value, list) else [value]
    out = []
    for c in calls:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise ToolDataError(f"function_call needs a 'name': {_clip(text)}")
        out.append(call(c["name"], c.get("arguments", c.get("parameters", {}))))
    return out


def openai_calls(raw) -> list[dict]:
    """An OpenAI message's tool_calls, canonical."""
    if not isinstance(raw, list) or not raw:
        raise ToolDataError("tool_calls must be a non-empty list")
    out = []
    for c in raw:
        function = c.get("function") if isinstance(c, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ToolDataError("each tool call needs function.name")
        out.append(call(function["name"], function.get("arguments", {})))
    return out


def check_tool_turns(messages: list[dict]) -> list[dict]:
    """The order of a tool conversation: user, then the assistant (an answer or calls), tool
    results only right after calls (each named after its call), ending with the assistant."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body or body[0]["role"] != "user":
        raise ToolDataError("a conversation starts with a user turn")
    pending: list[str] = []  # names of calls awaiting their results
    previous = None
    for n, m in enumerate(body, start=1):
        role = m["role"]
        if role == "system":
            raise ToolDataError(f"turn {n}: a system message is only allowed as the first turn")
        if role == "tool":
            if previous not in ("call", "tool"):
                raise ToolDataError(f"turn {n}: a tool result must follow the assistant's call")
            m.setdefault("name", pending.pop(0) if pending else "")
            previous = "tool"
            continue
        if role == "user" and previous not in (None, "answer"):
            raise ToolDataError(f"turn {n}: expected the assistant after {previous or 'start'}")
        if role == "assistant" and previous == "answer":
            raise ToolDataError(f"turn {n}: expected role 'user', got 'assistant'")
        if role == "assistant" and m.get("tool_calls"):
            pending = [c["function"]["name"] for c in m["tool_calls"]]
            previous = "call"
        else:
            if not isinstance(m.get("content"), str) or not m["content"].strip():
                raise ToolDataError(f"turn {n}: empty {role} content")
            previous = "answer" if role == "assistant" else "user"
    if body[-1]["role"] != "assistant":
        raise ToolDataError("the conversation must end with the assistant (an answer or a call)")
    return messages


def sharegpt_tool_turn(role: str, content, observation: bool) -> dict:
    """One LF sharegpt turn of a tool role, canonical."""
    if observation:
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        return {"role": "tool", "content": text}
    text = content if isinstance(content, str) else json.dumps(content)
    return {"role": "assistant", "content": "", "tool_calls": parse_call_text(text)}


def openai_tool_message(msg: dict) -> dict:
    """An OpenAI message with tool_calls or of role tool, canonical."""
    if msg.get("role") == "tool":
        content = msg.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        out = {"role": "tool", "content": text}
        if msg.get("name"):
            out["name"] = msg["name"]
        return out
    content = msg.get("content") or ""
    if not isinstance(content, str):
        raise ToolDataError("assistant content beside tool_calls must be text")
    return {"role": "assistant", "content": content, "tool_calls": openai_calls(msg["tool_calls"])}


def _clip(text, limit: int = 60) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- reading calls back from a model's reply -----------------------------------------------

# how a template writes calls: Hermes / Qwen2.5 / SmolLM3 tags, Mistral's [TOOL_CALLS] list,
# Llama 3.1's bare JSON object (with "parameters")
CONVENTIONS = ("hermes", "mistral", "llama3")
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


def tool_convention(template: str | None) -> str:
    """The call convention a chat template teaches (hermes when it names none)."""
    template = template or ""
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if CALL_OPEN not in template and ("<|python_tag|>" in template or "ipython" in template):
        return "llama3"
    return "hermes"


@dataclass
class ParsedReply:
    content: str  # the reply's text outside its calls
    calls: list[dict]  # [{"name": str, "arguments": dict}]
    invalid: list[str]  # call blocks that are not a JSON object with a name


def _as_call(value) -> dict | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"name": value["name"], "arguments": arguments}


def parse_tool_calls(text: str, convention: str = "hermes") -> ParsedReply:
    """A reply's calls as its template's convention writes them. A block that opens a call but
    holds no valid call is `invalid` (a reply cut at its end included), never guessed."""
    if convention == "hermes":
        calls, invalid, content, rest = [], [], [], text
        while CALL_OPEN in rest:
            before, _, after = rest.partition(CALL_OPEN)
            content.append(before)
            block, closed, rest = after.partition(CALL_CLOSE)
            parsed = _json_call(block)
            (calls if parsed else invalid).append(parsed or block.strip())
            if not closed:
                rest = ""
        content.append(rest)
        return ParsedReply("".join(content).strip(), calls, invalid)
    if convention == "mistral":
        before, marker, after = text.partition("[TOOL_CALLS]")
        if not marker:
            return ParsedReply(text.strip(), [], [])
        try:
            value = json.loads(after.strip())
        except json.JSONDecodeError:
            return ParsedReply(before.strip(), [], [after.strip()])
        items = value if isinstance(value, list) else [value]
        calls = [c for c in map(_as_call, items) if c]
        return ParsedReply(before.strip(), calls, [] if len(calls) == len(items) else [after])
    # llama3: the whole reply is one JSON call (after an optional <|python_tag|>)
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return ParsedReply(text.strip(), [], [])
    parsed = _json_call(body)
    return ParsedReply("", [parsed], []) if parsed else ParsedReply("", [], [body])


def _json_call(block: str) -> dict | None:
    try:
        return _as_call(json.loads(block.strip()))
    except json.JSONDecodeError:
        return None
