"""Long eval prompts: cut to the context minus max_new_tokens, keeping the conversation's end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.data.render import prompt_ids
from tunesmith.evaluation.context import fit_prompt

runner = CliRunner()
MAX_NEW = 8


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))


def turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def long_dialog(n: int, turns: int) -> list[dict]:
    messages = [turn("system", "你是一个乐于助人的助手。")]
    for t in range(turns):
        messages.append(turn("user", f"第{t}轮问题：" + "请详细介绍长城的历史。" * 6))
        messages.append(turn("assistant", f"第{t}轮回答：" + "长城修建于古代。" * 6))
    messages.append(turn("user", f"最后的问题{n}：长城有多长？"))
    messages.append(turn("assistant", "大约两万公里。"))
    return messages


def test_long_chinese_dialogs_are_cut_to_the_context(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoConfig

    import tunesmith.runs.inference as inference

    context = AutoConfig.from_pretrained(tiny_model_dir).max_position_embeddings  # 256
    data = tmp_path / "long.jsonl"
    short = [
        turn("user", "你好"),
        turn("assistant", "你好！"),
        turn("user", "最后的问题1：几点了？"),
    ]
    rows = [
        {"messages": long_dialog(0, 12)},
        {"messages": [*short, turn("assistant", "三点。")]},
        {"messages": [turn("user", "天" * 2000 + "结尾。"), turn("assistant", "好。")]},
        {"messages": [turn("user", "你好"), turn("assistant", "你好！")]},
    ]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")

    seen: list[list[dict]] = []
    real = inference.create_engine

    def spying(*args, **kwargs):
        engine = real(*args, **kwargs)
        generate = engine.generate

        def spy(conversations, params, cancelled=None):
            seen.extend(conversations)
            lengths = [len(prompt_ids(engine.tokenizer, c)) for c in conversations]
            assert max(lengths) <= context - params.max_new_tokens
            return generate(conversations, params, cancelled)

        engine.generate = spy
        return engine

    monkeypatch.setattr(inference, "create_engine", spying)
    result = runner.invoke(
        app,
        [
            "eval",
            f"model.name_or_path={tiny_model_dir}",
            f"output.dir={tmp_path / 'runs'}",
            f"eval.data=[{data}]",
            f"eval.max_new_tokens={MAX_NEW}",
            "eval.baseline=none",
            "eval.tasks=[generation]",
        ],
    )
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "runs").glob("eval-*")
    report = json.loads((folder / "eval.json").read_text())
    replies = report["results"]["model"]["tasks"]["replies"]
    assert replies["prompts_cut_to_context"] == 2 and replies["context_tokens"] == context
    assert len(report["results"]["model"]["predictions"]) == 4
    assert "prompts cut to context" in (folder / "reports" / "eval.html").read_text()

    long_one = next(c for c in seen if c[-1]["content"].startswith("最后的问题0"))
    full = rows[0]["messages"][:-1]
    assert long_one[0] == full[0]  # the system message stays
    assert long_one[1:] == full[len(full) - len(long_one) + 1 :]  # the end of the conversation
    assert len(long_one) < len(full)
    # the latest turn alone is too long: its end stays
    (alone,) = [c for c in seen if c[-1]["content"].endswith("天天结尾。")]
    assert len(alone) == 1 and 0 < len(alone[0]["content"]) < 2000
    assert [turn("user", "你好")] in seen and short in seen  # short prompts stay whole


def test_fit_prompt_keeps_short_prompts_and_the_system_message(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = long_dialog(0, 6)[:-1]
    whole = fit_prompt(tokenizer, messages, 10_000)
    assert not whole.cut and whole.messages == messages
    fitted = fit_prompt(tokenizer, messages, 120)
    assert fitted.cut and fitted.tokens <= 120 and fitted.messages[0]["role"] == "system"
    assert fitted.tokens == len(prompt_ids(tokenizer, fitted.messages))
    assert fitted.messages[-1] == messages[-1]
