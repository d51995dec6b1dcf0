"""Tool calling end to end: data layouts, rendering and loss masks, the eval task's scores, and
the server's tools / tool_calls with the official openai client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_tiny_tokenizer, shared_file

from tunesmith.data.formats import load_conversations
from tunesmith.data.render import (
    IGNORE_INDEX,
    TemplateError,
    ToolChat,
    prompt_ids,
    tokenize_conversation,
)
from tunesmith.data.tools import CHATML_TOOLS, parse_tool_calls, tool_convention
from tunesmith.evaluation.tool_calls import evaluate_calls, score_reply

WEATHER = {
    "name": "get_weather",
    "description": "The weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tool_tokenizer():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHATML_TOOLS
    return tokenizer


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def _lf_record() -> dict:
    return {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {
                "from": "function_call",
                "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}}),
            },
            {"from": "observation", "value": '{"temp": 21}'},
            {"from": "gpt", "value": "It is 21 degrees."},
        ],
        "tools": json.dumps([WEATHER]),
    }


def _openai_record() -> dict:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    return {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "It is 21 degrees."},
        ],
        "tools": [{"type": "function", "function": WEATHER}],
    }


# --- data, rendering, masks ------------------------------------------------------------


def test_llamafactory_and_openai_layouts_read_to_the_same_conversation(tmp_path):
    lf, _ = load_conversations([write_jsonl(tmp_path / "lf.jsonl", [_lf_record()])])
    oa, _ = load_conversations([write_jsonl(tmp_path / "oa.jsonl", [_openai_record()])])
    assert lf[0].messages == oa[0].messages
    assert lf[0].tools == oa[0].tools == [{"type": "function", "function": WEATHER}]
    assert lf[0].messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert lf[0].messages[2] == {"role": "tool", "content": '{"temp": 21}', "name": "get_weather"}


def test_loss_covers_the_calls_and_answers_never_the_tool_results(tmp_path, tool_tokenizer):
    (conv,), _ = load_conversations([write_jsonl(tmp_path / "lf.jsonl", [_lf_record()])])
    example = tokenize_conversation(tool_tokenizer, conv.messages, 1024, tools=conv.tools)
    trained = tool_tokenizer.decode(
        [
            t
            for t, label in zip(example.input_ids, example.labels, strict=True)
            if label != IGNORE_INDEX
        ]
    )
    assert trained == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "<|im_end|>\nIt is 21 degrees.<|im_end|>\n"
    )
    prompt = tool_tokenizer.decode(example.input_ids)
    assert '"name": "get_weather", "description"' in prompt  # the tool schema is in the prompt
    assert '<tool_response>\n{"temp": 21}\n</tool_response>' in prompt


def test_a_template_without_tools_is_one_sentence(tmp_path):
    (conv,), _ = load_conversations([write_jsonl(tmp_path / "lf.jsonl", [_lf_record()])])
    plain = build_tiny_tokenizer()  # ChatML without tools
    with pytest.raises(TemplateError, match="does not render tools or tool calls; set model"):
        tokenize_conversation(plain, conv.messages, 1024, tools=conv.tools)


def test_bad_tool_records_are_rejected_with_their_reason(tmp_path):
    records = [
        {
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "function_call", "value": "{not json"},
            ]
        },
        {"conversations": [{"from": "human", "value": "q"}, {"from": "observation", "value": "r"}]},
        {"messages": [{"role": "user", "content": "q"}], "tools": "[{]"},
    ]
    reasons = []
    _, stats = load_conversations(
        [write_jsonl(tmp_path / "bad.jsonl", records)],
        on_error="skip",
        reject=lambda record, why: reasons.append(why),
    )
    assert stats["rejected"] == 3
    assert reasons[0].startswith("function_call is not valid JSON")
    assert reasons[1] == "turn 2: a tool result must follow the assistant's call"
    assert reasons[2].startswith("field 'tools' is not valid JSON")


def test_glaive_demo_trains_its_calls(tool_tokenizer):
    path = shared_file("glaive_toolcall_en_demo.json")
    conversations, stats = load_conversations([path])
    assert stats["kept"] == 300
    called = next(c for c in conversations if any(m.get("tool_calls") for m in c.messages))
    example = tokenize_conversation(tool_tokenizer, called.messages, 4096, tools=called.tools)
    trained = tool_tokenizer.decode(
        [
            t
            for t, label in zip(example.input_ids, example.labels, strict=True)
            if label != IGNORE_INDEX
        ]
    )
    assert '<tool_call>\n{"name": "search_recipes"' in trained and "<tool_response>" not in trained


# --- parsing replies and scoring them --------------------------------------------------


def test_replies_parse_per_convention():
    hermes = parse_tool_calls(f"Let me check.\n{CALL_TEXT}", "hermes")
    assert hermes.content == "Let me check."
    assert hermes.calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    cut = parse_tool_calls('<tool_call>\n{"name": "get_weather", "argu', "hermes")
    assert cut.calls == [] and cut.invalid
    llama = parse_tool_calls('{"name": "get_weather", "parameters": {"city": "Paris"}}', "llama3")
    assert llama.calls == hermes.calls
    mistral = parse_tool_calls(
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', "mistral"
    )
    assert mistral.calls == hermes.calls
    assert tool_convention(CHATML_TOOLS) == "hermes"


def test_call_scores_exact_partial_wrong_and_invalid():
    want = [
        {
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}},
        }
    ]

    def tagged(name: str, arguments: dict) -> str:
        return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"

    exact = tagged("get_weather", {"unit": "C", "city": "Paris"})
    half = tagged("get_weather", {"city": "Paris", "unit": "F"})
    wrong = tagged("get_time", {"city": "Paris"})
    assert score_reply(exact, want, "hermes") == {
        "valid_call": 1.0,
        "right_function": 1.0,
        "exact_arguments": 1.0,
        "partial_arguments": 1.0,
    }
    assert score_reply(half, want, "hermes")["exact_arguments"] == 0.0
    assert score_reply(half, want, "hermes")["partial_arguments"] == 0.5
    assert score_reply(wrong, want, "hermes")["right_function"] == 0.0
    assert score_reply("It is sunny.", want, "hermes")["valid_call"] == 0.0
    assert score_reply("<tool_call>{oops</tool_call>", want, "hermes")["valid_call"] == 0.0
    report = evaluate_calls([exact, "Hello!"], [want, None], CHATML_TOOLS)
    assert (report["valid_call"], report["no_call"], report["call_items"]) == (1.0, 1.0, 1)


def test_eval_items_offer_their_tools_and_keep_the_reference_call(tmp_path, tool_tokenizer):
    from tunesmith.evaluation.runner import load_items

    record = _openai_record()
    record["messages"] = record["messages"][:2]  # the test asks for the call
    (item,) = load_items([str(write_jsonl(tmp_path / "t.jsonl", [record]))])
    assert isinstance(item.messages, ToolChat) and item.messages.tools[0]["function"] == WEATHER
    assert item.reference_calls[0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    text = tool_tokenizer.decode(prompt_ids(tool_tokenizer, item.messages))
    assert "<tools>" in text and text.endswith("<|im_start|>assistant\n")


# --- the server ------------------------------------------------------------------------


class ScriptedEngine:
    """Answers every prompt with `reply` (streamed in 5-character deltas), and keeps the
    rendered prompts: the server's parsing is tested without a model that learned to call."""

    model = None  # no weights: the registry has no adapter to switch off

    def __init__(self, tokenizer, reply: str):
        self.tokenizer, self.reply, self.prompts = tokenizer, reply, []

    def generate(self, conversations, params, cancelled=None):
        from tunesmith.models.engine import Completion

        out = []
        for c in conversations:
            ids = prompt_ids(self.tokenizer, c)
            self.prompts.append(self.tokenizer.decode(ids))
            out.append(Completion(self.reply, "stop", len(ids), 9))
        return out

    def stream_batch(self, conversations, params, emit, cancelled=None):
        for row, c in enumerate(conversations):
            self.prompts.append(self.tokenizer.decode(prompt_ids(self.tokenizer, c)))
            for i in range(0, len(self.reply), 5):
                emit(row, self.reply[i : i + 5])
            emit(row, None)


@pytest.fixture
def scripted(tool_tokenizer):
    from helpers import LiveServer

    from tunesmith.config.serve import ServeConfig
    from tunesmith.serve.app import ServerState
    from tunesmith.serve.batcher import Batcher
    from tunesmith.serve.registry import ModelRegistry

    def serve(reply: str, tokenizer=tool_tokenizer):
        engine = ScriptedEngine(tokenizer, reply)
        registry = ModelRegistry(engine, "base")
        cfg = ServeConfig(model_name="base")
        state = ServerState(cfg, registry, Batcher(registry, cfg.max_queue, 4, 0.0))
        live = LiveServer(state)
        servers.append(live)
        return live, engine

    servers: list = []
    yield serve
    for live in servers:
        live.stop()


TOOLS = [{"type": "function", "function": WEATHER}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def test_server_returns_tool_calls_parsed_from_the_reply(scripted):
    live, engine = scripted(f"Checking.\n{CALL_TEXT}")
    reply = live.client().chat.completions.create(model="base", messages=ASK, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"} and call.id.startswith("call_")
    assert '"name": "get_weather", "description"' in engine.prompts[-1]  # tools were rendered

    # the client sends its call and the tool's result back; the model answers
    follow = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    live.state.registry.engine.reply = "It is 21 degrees."
    answer = live.client().chat.completions.create(model="base", messages=follow, tools=TOOLS)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == "It is 21 degrees."
    assert answer.choices[0].message.tool_calls is None
    assert '<tool_response>\n{"temp": 21}\n</tool_response>' in engine.prompts[-1]


def test_streamed_tool_calls_arrive_as_openai_deltas(scripted):
    live, _ = scripted(f"Checking.\n{CALL_TEXT}")
    stream = live.client().chat.completions.create(
        model="base", messages=ASK, tools=TOOLS, stream=True
    )
    content, calls, reasons = "", {}, []
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for part in delta.tool_calls or []:
            entry = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = part.id or entry["id"]
            entry["name"] += part.function.name or ""
            entry["arguments"] += part.function.arguments or ""
        reasons.append(chunk.choices[0].finish_reason)
    assert content.strip() == "Checking."
    assert list(calls) == [0] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"} and calls[0]["id"]
    assert reasons[-1] == "tool_calls"


def test_server_refuses_what_it_cannot_honour(scripted):
    import openai

    live, _ = scripted("hi")
    client = live.client()
    with pytest.raises(openai.BadRequestError, match="constrained decoding"):
        client.chat.completions.create(
            model="base", messages=ASK, tools=TOOLS, tool_choice="required"
        )
    plain, _ = scripted("hi", tokenizer=build_tiny_tokenizer())
    with pytest.raises(openai.BadRequestError, match="does not render tools"):
        plain.client().chat.completions.create(model="base", messages=ASK, tools=TOOLS)
    # tool_choice none: the tools are not offered, the reply is text
    reply = client.chat.completions.create(
        model="base", messages=ASK, tools=TOOLS, tool_choice="none"
    )
    assert reply.choices[0].message.content == "hi"


def test_tunesmith_eval_runs_the_tool_calls_task(tmp_path, tiny_tokenizer):
    from conftest import build_tiny_llama
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    tiny_model_dir = tmp_path / "tiny-2k"  # the tool schema needs more than 256 positions
    model = build_tiny_llama(len(tiny_tokenizer))
    model.config.max_position_embeddings = 2048
    model.save_pretrained(tiny_model_dir)
    tiny_tokenizer.save_pretrained(tiny_model_dir)

    asks_call = _openai_record()
    asks_call["messages"] = asks_call["messages"][:2]
    answers = _openai_record()  # after the tool's result the reference is a plain answer
    data = write_jsonl(tmp_path / "calls.jsonl", [asks_call, answers])
    result = CliRunner().invoke(
        app,
        [
            "eval",
            f"model.name_or_path={tiny_model_dir}",
            "model.chat_template=chatml_tools",
            f"output.dir={tmp_path / 'runs'}",
            f"eval.data=[{data}]",
            "eval.max_new_tokens=4",
            "eval.baseline=none",
            "eval.tasks=[tool_calls]",
        ],
    )
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "runs").glob("eval-*")
    model = json.loads((folder / "eval.json").read_text())["results"]["model"]
    task = model["tasks"]["tool_calls"]
    assert (task["call_items"], task["answer_items"], task["convention"]) == (1, 1, "hermes")
    replies = model["predictions"]
    expected = score_reply(replies[0], _lf_call(), "hermes")
    assert model["scores"]["valid_call"] == [expected["valid_call"], None]
    assert task["no_call"] == score_reply(replies[1], None, "hermes")["no_call"]


def _lf_call() -> list[dict]:
    arguments = {"city": "Paris"}
    return [{"type": "function", "function": {"name": "get_weather", "arguments": arguments}}]


def test_a_prompt_cut_to_the_context_keeps_its_tools(tool_tokenizer):
    from tunesmith.evaluation.context import fit_prompt
    from tunesmith.utils.errors import ConfigError

    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    history = [
        {"role": "user", "content": "hello " * 60},
        {"role": "assistant", "content": "hi " * 60},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    prompt = ToolChat(history, tools)
    full = len(prompt_ids(tool_tokenizer, prompt))
    fitted = fit_prompt(tool_tokenizer, prompt, full - 50)
    assert fitted.cut and isinstance(fitted.messages, ToolChat) and fitted.messages.tools == tools
    assert fitted.tokens == len(prompt_ids(tool_tokenizer, fitted.messages)) <= full - 50
    assert fitted.messages[-1]["content"] == "Weather in Paris?"
    with pytest.raises(ConfigError, match="the tools a test item offers take"):
        fit_prompt(tool_tokenizer, prompt, 20)


def test_tool_conversations_convert_between_layouts_without_loss(tmp_path):
    from tunesmith.data.convert import convert_file

    (original,), _ = load_conversations([write_jsonl(tmp_path / "lf.jsonl", [_lf_record()])])
    for fmt in ("openai", "sharegpt"):
        stats = convert_file(tmp_path / "lf.jsonl", tmp_path / f"{fmt}.jsonl", fmt)
        assert stats["written"] == 1
        (back,), _ = load_conversations([tmp_path / f"{fmt}.jsonl"])
        assert (back.messages, back.tools) == (original.messages, original.tools)
    rejected = []
    stats = convert_file(
        tmp_path / "lf.jsonl",
        tmp_path / "alpaca.jsonl",
        "alpaca",
        on_error="skip",
        reject=lambda record, why: rejected.append(why),
    )
    assert (stats["written"], stats["rejected"]) == (0, 1)
    assert rejected == ["alpaca cannot hold tool calls; convert to sharegpt or openai"]


def test_data_clean_keeps_tool_calls_and_their_tools(tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    source = write_jsonl(tmp_path / "lf.jsonl", [_lf_record()])
    out = tmp_path / "clean.jsonl"
    result = CliRunner().invoke(app, ["data", "clean", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    (original,), _ = load_conversations([source])
    (back,), _ = load_conversations([out])
    assert (back.messages, back.tools) == (original.messages, original.tools)
