"""Evaluation of tool calls (eval task `tool_calls`).

A test item whose reference (its last assistant turn) is a call is scored on the model's reply,
read back by the template's own convention (data/tools.parse_tool_calls):
- `valid_call`: the reply holds at least one call and every call block is a JSON object with
  a name (a reply that writes no call, or a broken one, is not valid);
- `right_function`: the called functions are the reference's, in order;
- `exact_arguments`: ...and each call's arguments equal the reference's;
- `partial_arguments`: the share of the reference's argument key/value pairs the reply's calls
  hold (values compared as JSON, so 1 == 1.0 but "1" != 1), averaged over the calls.
An item whose reference is a plain answer scores `no_call`: 1 when the reply calls nothing.
"""

from __future__ import annotations

import json

from tunesmith.data.tools import parse_tool_calls, tool_convention

CALL_METRICS = ("valid_call", "right_function", "exact_arguments", "partial_arguments")


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _partial(got: dict, want: dict) -> float:
    if not want:
        return float(not got)
    return sum(k in got and _same(got[k], v) for k, v in want.items()) / len(want)


def score_reply(reply: str, reference_calls: list[dict] | None, convention: str) -> dict:
    """The metrics of one reply; reference_calls None: the reference answers without a call."""
    parsed = parse_tool_calls(reply, convention)
    if reference_calls is None:
        return {"no_call": float(not parsed.calls and not parsed.invalid)}
    want = [(c["function"]["name"], c["function"]["arguments"]) for c in reference_calls]
    got = [(c["name"], c["arguments"]) for c in parsed.calls]
    valid = bool(got) and not parsed.invalid
    names = [n for n, _ in got] == [n for n, _ in want]
    exact = names and all(_same(g, w) for (_, g), (_, w) in zip(got, want, strict=True))
    partial = [
        _partial(got[i][1], args) if i < len(got) and got[i][0] == name else 0.0
        for i, (name, args) in enumerate(want)
    ]
    return {
        "valid_call": float(valid),
        "right_function": float(valid and names),
        "exact_arguments": float(valid and exact),
        "partial_arguments": sum(partial) / len(partial) if valid else 0.0,
    }


def evaluate_calls(replies: list[str], references: list[list[dict] | None], template) -> dict:
    """Per-item scores and their means: `calls` over the items whose reference is a call,
    `answers` over those answered without one."""
    convention = tool_convention(template)
    rows = [score_reply(r, ref, convention) for r, ref in zip(replies, references, strict=True)]
    calls = [r for r in rows if "valid_call" in r]
    answers = [r for r in rows if "no_call" in r]

    def mean(rows_, key):
        return round(sum(r[key] for r in rows_) / len(rows_), 4) if rows_ else None

    return {
        "convention": convention,
        "call_items": len(calls),
        "answer_items": len(answers),
        **{key: mean(calls, key) for key in CALL_METRICS},
        "no_call": mean(answers, "no_call"),
        "items": rows,
    }
