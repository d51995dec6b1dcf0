"""`tunesmith data ...` end to end through the CLI, on small files with planted problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_llm_client import completion, serve
from typer.testing import CliRunner

from tunesmith.cli.main import app

runner = CliRunner()

RECORDS = [
    {
        "instruction": "What is the capital of France?",
        "input": "",
        "output": "Paris is the capital.",
    },
    {
        "instruction": "What is the capital of France?",
        "input": "",
        "output": "Paris is the capital.",
    },
    {"instruction": "Email me", "input": "", "output": "Write to alice@example.com any time."},
    {"instruction": "hi", "input": "", "output": "ok"},  # too short on both sides
    {"instruction": "Name three primary colours", "input": "", "output": "Red, yellow and blue."},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def test_clean_keeps_or_rejects_every_record_and_logs_lineage(tmp_path):
    src = _jsonl(tmp_path / "raw.jsonl", RECORDS)
    out = tmp_path / "clean.jsonl"
    result = invoke("data", "clean", src, "--out", out, "near_dedup=false")
    assert result.exit_code == 0, result.output
    kept, rejects = _rows(out), _rows(tmp_path / "rejects.jsonl")
    assert len(kept) + len(rejects) == len(RECORDS)
    assert {r["step"] for r in rejects} == {"exact_dedup", "length"}
    assert any("[EMAIL]" in r["output"] for r in kept)
    assert "5 read = 3 kept + 2 rejected" in result.stdout

    log = invoke("data", "log", out)
    assert log.exit_code == 0, log.output
    assert "clean" in log.stdout and "raw.jsonl" in log.stdout


def test_clean_config_typo_is_a_user_error(tmp_path):
    src = _jsonl(tmp_path / "raw.jsonl", RECORDS)
    result = invoke("data", "clean", src, "--out", tmp_path / "o.jsonl", "near_dedupe=false")
    assert result.exit_code == 2
    assert "near_dedup" in result.output  # the suggestion


def test_inspect_writes_html_and_json(tmp_path):
    src = _jsonl(tmp_path / "raw.jsonl", RECORDS)
    result = invoke("data", "inspect", src, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "inspect.json").read_text())
    assert report["records"]["read"] == 5
    assert (tmp_path / "report" / "inspect.html").stat().st_size > 1000


def test_convert_split_balance(tmp_path):
    src = _jsonl(tmp_path / "raw.jsonl", RECORDS)
    assert invoke("data", "convert", src, tmp_path / "chat.json", "--to", "openai").exit_code == 0
    converted = json.loads((tmp_path / "chat.json").read_text())
    assert converted[0]["messages"][-1] == {"role": "assistant", "content": "Paris is the capital."}
    assert (tmp_path / "chat.json.meta.json").is_file()

    labelled = _jsonl(
        tmp_path / "cls.jsonl",
        [{"text": f"t{i}", "label": "a" if i < 8 else "b"} for i in range(10)],
    )
    result = invoke(
        "data",
        "split",
        labelled,
        "--out-dir",
        tmp_path / "parts",
        "--ratios",
        "0.5,0.5",
        "--stratify",
        "label",
    )
    assert result.exit_code == 0, result.output
    train, val = _rows(tmp_path / "parts" / "train.jsonl"), _rows(tmp_path / "parts" / "val.jsonl")
    assert sorted(r["text"] for r in train + val) == sorted(f"t{i}" for i in range(10))
    assert [r["label"] for r in train].count("b") == 1

    assert invoke("data", "balance", labelled, tmp_path / "bal.jsonl").exit_code == 0
    labels = [r["label"] for r in _rows(tmp_path / "bal.jsonl")]
    assert labels.count("a") == labels.count("b") == 8


def test_augment_with_noise_keeps_originals_and_marks_origin(tmp_path):
    src = _jsonl(tmp_path / "raw.jsonl", RECORDS[2:3] + RECORDS[4:])
    dst = tmp_path / "aug.jsonl"
    assert invoke("data", "augment", src, dst, "--method", "noise").exit_code == 0
    rows = _rows(dst)
    assert rows[:2] == RECORDS[2:3] + RECORDS[4:]
    assert len(rows) == 4 and all(r["origin"]["method"] == "noise" for r in rows[2:])


def test_synth_teacher_answers_prompts_through_an_endpoint(tmp_path):
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say hi"}, {"prompt": "Say bye"}])
    dst = tmp_path / "teacher.jsonl"

    def respond(method, path, body, headers):
        if method == "GET":  # the client asks /models for the model name when none is given
            return 200, {"data": [{"id": "fake-teacher"}]}
        question = body["messages"][-1]["content"]
        return 200, completion("Hi!" if "hi" in question else "Bye!")

    with serve(respond) as (url, _):
        result = invoke("data", "synth", prompts, dst, "--teacher", "--model", url)
    assert result.exit_code == 0, result.output
    answers = sorted(r["messages"][-1]["content"] for r in _rows(dst))
    assert answers == ["Bye!", "Hi!"]


def test_watch_alerts_on_bad_records_and_a_low_pass_rate(tmp_path):
    good, bad = RECORDS[4], RECORDS[3]
    lines = [json.dumps(good)] * 20 + [json.dumps(bad)] * 10 + ["{not json"]
    alerts = tmp_path / "alerts.jsonl"
    result = runner.invoke(
        app,
        ["data", "watch", "-", "--alerts", str(alerts), "--min-pass-rate", "0.8"],
        input="\n".join(lines) + "\n",
    )
    assert result.exit_code == 0, result.output
    dashboard = json.loads(result.stdout.strip().splitlines()[-1])
    assert (dashboard["total"], dashboard["passed"]) == (31, 20)  # the bad line is a failure
    raised = _rows(alerts)
    assert raised[0]["where"] == "<stdin>:21" and "prompt_too_short" in raised[0]["issues"]
    assert raised[-1]["where"] == "<stdin>:31" and raised[-1]["issues"] == ["malformed"]
    drops = [a for a in raised if a["type"] == "pass_rate_alert"]
    assert len(drops) == 1  # once per drop below the threshold, not once per record


@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_missing_file_is_a_one_line_error(tmp_path, command):
    extra = [tmp_path / "x.jsonl", "--to", "alpaca"] if command == "convert" else []
    result = invoke("data", command, tmp_path / "missing.jsonl", *extra)
    assert result.exit_code == 2
    assert "missing.jsonl" in result.output and "no such file" in result.output


def test_a_huge_record_is_inspected_and_rejected_by_length(tmp_path):
    huge = {"instruction": "Summarize this", "input": "", "output": "word " * 1_000_000}  # 5 MB
    src = _jsonl(tmp_path / "big.jsonl", [huge, RECORDS[4]])
    assert invoke("data", "inspect", src, "--out", tmp_path / "rep").exit_code == 0
    report = json.loads((tmp_path / "rep" / "inspect.json").read_text())
    assert report["lengths"]["chars"]["response"]["max"] >= 5_000_000
    result = invoke("data", "clean", src, "--out", tmp_path / "clean.jsonl")
    assert result.exit_code == 0, result.output
    (reject,) = _rows(tmp_path / "rejects.jsonl")
    assert reject["line"] == 1 and reject["step"] == "length"


def test_empty_file_and_wrong_declared_format_say_so(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = invoke("data", "inspect", empty, "--out", tmp_path / "rep")
    assert result.exit_code == 2 and "no records found" in result.output
    src = _jsonl(tmp_path / "raw.jsonl", RECORDS)
    result = invoke("data", "clean", src, "--format", "sharegpt", "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 0, result.output
    assert "5 x parse: field 'conversations' is missing or empty" in result.stdout


def test_inspect_thresholds_are_overrides(tmp_path):
    src = _jsonl(tmp_path / "raw.jsonl", RECORDS)
    strict = invoke("data", "inspect", src, "--out", tmp_path / "a", "min_response_chars=30")
    lenient = invoke("data", "inspect", src, "--out", tmp_path / "b", "min_prompt_chars=1")
    assert strict.exit_code == lenient.exit_code == 0, strict.output + lenient.output
    a = json.loads((tmp_path / "a" / "inspect.json").read_text())
    b = json.loads((tmp_path / "b" / "inspect.json").read_text())
    assert a["rules"]["min_response_chars"] == 30 and b["rules"]["min_prompt_chars"] == 1
    assert a["scores"]["passed"] < b["scores"]["passed"]  # the thresholds change the verdicts
    typo = invoke("data", "inspect", src, "pass_scor=70")
    assert typo.exit_code == 2 and "did you mean 'pass_score'" in typo.output
