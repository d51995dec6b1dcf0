"""The `tunesmith` command through typer's CliRunner: user errors, a full train run, chat."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import write_run_yaml
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.config.load import load_config
from tunesmith.utils.errors import ConfigError

runner = CliRunner()


@pytest.fixture(autouse=True)
def _offline_and_wide(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps normal output at the console width


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash: show its traceback in the test report
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_config(path: Path, model_dir: Path, train_file: Path, runs: Path, train=None) -> Path:
    """A LoRA run 'cli-run' under runs; the keys of `train` replace the defaults."""
    defaults = {"max_steps": 4, "batch_size": 4, "save_steps": 2, "learning_rate": 1e-3}
    return write_run_yaml(
        path,
        model_dir,
        train_file,
        runs,
        "cli-run",
        method={"type": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
        train={**defaults, **(train or {})},
    )


def assert_user_error(result, *parts: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "error:" in result.output
    for part in parts:
        assert part in result.output, result.output


# --- user errors -------------------------------------------------------------------------


def test_typo_in_the_config_is_a_one_message_error(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  learnig_rate: 1.0e-4\n", encoding="utf-8")
    result = invoke("train", config)
    assert_user_error(
        result,
        f"error: {config}: invalid configuration",
        "unknown key 'train.learnig_rate' (did you mean 'train.learning_rate'?); allowed here: "
        "stage, epochs,",
    )


def test_typo_in_an_override(tmp_path):
    result = invoke("train", "trian.epochs=1")
    assert_user_error(result, "unknown key 'trian' (did you mean 'train'?)")


def test_train_without_arguments_explains_what_to_give():
    result = invoke("train")
    assert_user_error(
        result, "give a config file (tunesmith train my_run.yaml) or key=value overrides"
    )


def test_two_config_files_are_refused(tmp_path):
    result = invoke("train", tmp_path / "a.yaml", tmp_path / "b.yaml")
    assert_user_error(result, "expected one config file, got", "overrides need key=value")


def test_missing_config_file(tmp_path):
    result = invoke("train", tmp_path / "missing.yaml")
    assert_user_error(result, f"config file '{tmp_path / 'missing.yaml'}' not found")


def test_no_training_data_brackets_in_a_message_are_printed(tmp_path, tiny_model_dir):
    # the message holds "[my_data.jsonl]": printed as text, not swallowed as rich markup
    result = invoke(
        "train", f"model.name_or_path={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}"
    )
    assert_user_error(
        result, "data.train: no training files given (e.g. data.train=[my_data.jsonl])"
    )


def test_resume_of_a_folder_that_is_no_run(tmp_path):
    result = invoke("train", "--resume", tmp_path)
    assert_user_error(result, f"--resume: '{tmp_path}' is not a run folder (no config.yaml)")


def test_no_command_shows_help():
    result = runner.invoke(app, [])
    assert "Usage" in result.output
    assert "train" in result.output and "chat" in result.output


# --- a full run --------------------------------------------------------------------------


def test_train_end_to_end_then_refuse_to_overwrite_then_resume(
    tmp_path, tiny_model_dir, alpaca_file
):
    runs = tmp_path / "runs"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, alpaca_file, runs)
    result = invoke("train", config)
    assert result.exit_code == 0, result.output
    run = runs / "cli-run"

    # the resolved config is saved and loads back to what was asked for
    assert load_config(run / "config.yaml") == load_config(config)
    saved = load_config(run / "config.yaml")
    assert saved.method.r == 4 and saved.method.target_modules == ["q_proj", "v_proj"]

    steps = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    for m in steps:
        for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s"):
            assert isinstance(m[key], float | int), (key, m)
        assert m["loss"] > 0 and m["tokens_per_s"] > 0

    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4
    assert set(adapter_config["target_modules"]) == {"q_proj", "v_proj"}
    assert (run / "plots" / "loss.png").stat().st_size > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4
    assert summary["method"] == "lora"
    assert summary["resumed_from"] is None
    assert summary["data"]["read"] == 8 and summary["data"]["rejected"] == 0
    assert (run / "checkpoints" / "checkpoint-4").is_dir()
    index = read_jsonl(runs / "index.jsonl")
    assert [(e["run"], e["status"]) for e in index] == [("cli-run", "done")]

    # the same command again must not overwrite the finished run
    again = invoke("train", config)
    assert_user_error(again, "already exists", "--resume")
    assert json.loads((run / "summary.json").read_text())["steps"] == 4

    # resume from checkpoint-4 up to step 6
    resumed = invoke("train", "--resume", run, "train.max_steps=6")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6
    assert summary["resumed_from"].endswith("checkpoint-4")
    assert load_config(run / "config.yaml").train.max_steps == 6
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert (run / "checkpoints" / "checkpoint-6").is_dir()

    # CONFIG --resume finds the run that config wrote
    resumed = invoke("train", config, "--resume", "train.max_steps=8")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "summary.json").read_text())["resumed_from"].endswith("checkpoint-6")


def test_resume_of_a_config_picks_its_newest_run_with_a_checkpoint(tmp_path):
    from tunesmith.config.schema import OutputConfig
    from tunesmith.runs.folder import latest_run

    def make_run(name: str, step: int | None, mtime: float) -> Path:
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        if step is not None:
            state = run / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
            state.parent.mkdir()
            state.write_text("{}")
            os.utime(state, (mtime, mtime))
        return run

    make_run("sft-lora-20261101-100000", 10, 1000.0)
    newest = make_run("sft-lora-20261102-100000", 5, 2000.0)
    make_run("sft-lora-20261103-100000", None, 3000.0)  # crashed before any checkpoint
    make_run("pt-lora-20261104-100000", 3, 4000.0)  # another stage
    assert latest_run(OutputConfig(dir=str(tmp_path)), "sft-lora") == newest
    with pytest.raises(ConfigError, match="no run with a checkpoint matches"):
        latest_run(OutputConfig(dir=str(tmp_path)), "sft-full")


def test_resume_needs_a_run_or_a_config():
    assert_user_error(invoke("train", "--resume"), "--resume: give a run folder")


# --- malformed data ----------------------------------------------------------------------


@pytest.fixture
def data_with_bad_line_3(alpaca_file) -> Path:
    lines = alpaca_file.read_text(encoding="utf-8").splitlines()
    bad = {"instruction": "What is 2 plus 2?", "input": "", "output": ""}
    lines[2] = json.dumps(bad)
    alpaca_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return alpaca_file


def test_malformed_record_stops_the_run_with_file_and_line(
    tmp_path, tiny_model_dir, data_with_bad_line_3
):
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data_with_bad_line_3, tmp_path)
    result = invoke("train", config)
    assert_user_error(result, f"{data_with_bad_line_3}:3: field 'output' is missing or empty")
    assert "train.jsonl:3:" in result.output


def test_malformed_record_skipped_and_written_to_rejects(
    tmp_path, tiny_model_dir, data_with_bad_line_3
):
    runs = tmp_path / "runs"
    config = write_config(
        tmp_path / "run.yaml",
        tiny_model_dir,
        data_with_bad_line_3,
        runs,
        train={"max_steps": 2, "save_steps": 2},
    )
    result = invoke("train", config, "data.on_error=skip")
    assert result.exit_code == 0, result.output
    run = runs / "cli-run"
    rejects = read_jsonl(run / "rejects.jsonl")
    assert rejects == [
        {
            "source": str(data_with_bad_line_3),
            "line": 3,
            "reason": "field 'output' is missing or empty",
            "record": {"instruction": "What is 2 plus 2?", "input": "", "output": ""},
        }
    ]
    data = json.loads((run / "summary.json").read_text())["data"]
    assert data["rejected"] == 1
    assert data["examples"] == 7
    assert data["read"] == data["examples"] + data["rejected"] == 8


def test_every_record_rejected_stops_with_a_sentence(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "Hi", "output": ""}\n' * 3, encoding="utf-8")
    runs = tmp_path / "runs"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, bad, runs)
    result = invoke("train", config, "data.on_error=skip")
    assert_user_error(result, "data.train: no training examples left of 3 records read")
    assert len(read_jsonl(runs / "cli-run" / "rejects.jsonl")) == 3


# --- chat --------------------------------------------------------------------------------


def _direct_reply(model_dir, prompt: str, max_new_tokens: int) -> str:
    from tunesmith.config.schema import ModelConfig
    from tunesmith.models.generate import generate_replies
    from tunesmith.runs.trained import load_for_inference

    model, tokenizer = load_for_inference(model_cfg=ModelConfig(name_or_path=str(model_dir)))
    messages = [{"role": "user", "content": prompt}]
    return generate_replies(model, tokenizer, [messages], max_new_tokens)[0].text


def test_chat_with_a_model_answers_one_prompt(tiny_model_dir):
    result = invoke("chat", "--model", tiny_model_dir, "--prompt", "hi", "--max-new-tokens", "5")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == _direct_reply(tiny_model_dir, "hi", 5)


def test_interactive_chat_keeps_history_until_reset(tiny_model_dir):
    expected = _direct_reply(tiny_model_dir, "hi", 5)
    result = runner.invoke(
        app,
        ["chat", "--model", str(tiny_model_dir), "--max-new-tokens", "5"],
        input="hi\n/reset\nhi\n/exit\n",
    )
    assert result.exit_code == 0, result.output
    replies = [
        line.split("assistant>", 1)[1].strip()
        for line in result.stdout.splitlines()
        if "assistant>" in line
    ]
    assert replies == [expected, expected]  # after /reset the second turn starts afresh


@pytest.fixture
def trained_run(tmp_path, tiny_model_dir, alpaca_file) -> Path:
    runs = tmp_path / "runs"
    config = write_config(
        tmp_path / "run.yaml",
        tiny_model_dir,
        alpaca_file,
        runs,
        train={"max_steps": 1, "save_steps": 10},
    )
    result = invoke("train", config)
    assert result.exit_code == 0, result.output
    return runs / "cli-run"


def test_chat_with_a_run_folder_uses_the_runs_base_model(trained_run):
    result = invoke("chat", "--adapter", trained_run, "--prompt", "hi", "--max-new-tokens", "5")
    assert result.exit_code == 0, result.output
    assert "error:" not in result.output and "Traceback" not in result.output


def test_chat_with_a_missing_adapter_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal or a log: errors are not wrapped
    missing = tmp_path / "nonexistent"
    result = invoke("chat", "--adapter", missing, "--prompt", "hi")
    assert_user_error(result, f"'{missing}' does not exist")
    assert len(result.output.strip().splitlines()) == 1
