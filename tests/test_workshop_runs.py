"""The workshop's runs table, read from real run folders: status (finished, failed, interrupted),
data hash, steps, best metric; `tunesmith runs list|show|compare`; paths kept in the workspace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from helpers import run_config, train_run, write_alpaca
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.data.quality.version import file_hash
from tunesmith.runs.folder import RunFolder
from tunesmith.utils.errors import DataError
from tunesmith.workshop import actions
from tunesmith.workshop.workspace import PathRefused, RunNotFound, Workspace

runner = CliRunner()


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir) -> Workspace:
    """A workspace with two finished runs (learning rates 1e-2 and 1e-3) and a failed one."""
    root = tmp_path_factory.mktemp("workspace")
    shutil.copytree(tiny_model_dir, root / "model")
    data = write_alpaca(root / "train.jsonl")
    for name, lr in (("fast", "1e-2"), ("slow", "1e-3")):
        lr_key = f"train.learning_rate={lr}"
        train_run(run_config(root, root / "model", data, name, "train.max_steps=3", lr_key))
    bad = root / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError):
        train_run(run_config(root, root / "model", bad, "broken", "train.max_steps=3"))
    return Workspace(root)


def _rows(ws: Workspace, **filters) -> dict[str, dict]:
    return {row["name"]: row for row in actions.list_runs(ws, **filters)["runs"]}


def test_the_table_is_read_from_the_run_folders(ws):
    rows = _rows(ws)
    assert set(rows) == {"fast", "slow", "broken"}
    fast = rows["fast"]
    assert fast["status"] == "finished" and fast["error"] is None
    assert (fast["stage"], fast["method"], fast["steps"]) == ("sft", "lora", 3)
    assert fast["model"].endswith("model")
    # the data-version hash of the training file, as the model card states it
    assert fast["data_hash"] == file_hash(ws.root / "train.jsonl")[:12]
    last_loss = json.loads((ws.runs_dir / "fast" / "metrics.jsonl").read_text().splitlines()[-1])
    assert fast["best"] == {"name": "loss (last)", "value": last_loss["loss"], "step": 3}
    assert fast["wall_seconds"] > 0 and fast["started"]
    process = RunFolder(ws.runs_dir / "fast").read_process()
    assert process["pid"] == os.getpid() and process["status"] == "finished"


def test_a_failed_run_shows_its_sentence_and_filters_work(ws):
    broken = _rows(ws, status="failed")
    assert list(broken) == ["broken"]
    error = broken["broken"]["error"]
    assert "bad.jsonl:2" in error and "Traceback" not in error
    assert set(_rows(ws, status="finished")) == {"fast", "slow"}
    assert _rows(ws, stage="dpo") == {}
    by_name = [r["name"] for r in actions.list_runs(ws, sort="name")["runs"]]
    assert by_name == ["broken", "fast", "slow"]
    with pytest.raises(Exception, match="status: 'done' is not one of"):
        actions.list_runs(ws, status="done")


def test_a_dead_training_process_is_interrupted_or_failed_with_its_log(ws, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names no process any more
    killed = RunFolder(ws.runs_dir / "killed")
    killed.root.mkdir()
    killed.start_process(pid=dead.pid)
    assert _rows(ws)["killed"]["status"] == "interrupted"
    (killed.root / "launch.log").write_text("loading\nerror: model.name_or_path: 'x' not found\n")
    killed.start_process(pid=dead.pid, log="launch.log")
    row = _rows(ws)["killed"]
    assert (row["status"], row["error"]) == ("failed", "model.name_or_path: 'x' not found")
    killed.start_process()  # this process: alive
    assert _rows(ws)["killed"]["status"] == "running"
    shutil.rmtree(killed.root)


def test_runs_cli_list_show_compare(ws):
    listed = runner.invoke(app, ["runs", "list", "--workspace", str(ws.root), "--json"])
    assert listed.exit_code == 0, listed.output
    assert {r["name"] for r in json.loads(listed.output)["runs"]} == {"fast", "slow", "broken"}

    table = runner.invoke(app, ["runs", "list", "--workspace", str(ws.root), "--status", "failed"])
    assert table.exit_code == 0 and "broken" in table.output and "fast" not in table.output

    shown = runner.invoke(app, ["runs", "show", "fast", "--workspace", str(ws.root), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["artifacts"] == ["adapter"]

    compared = runner.invoke(
        app, ["runs", "compare", "fast", "slow", "--workspace", str(ws.root), "--json"]
    )
    assert compared.exit_code == 0, compared.output
    result = json.loads(compared.output)
    assert result["config"]["train.learning_rate"] == [0.01, 0.001]
    assert result["config"]["output.name"] == ["fast", "slow"]
    assert "model.name_or_path" not in result["config"]  # the same in both
    assert len(result["metrics"]["train_loss"]) == 2
    assert all(isinstance(v, float) for v in result["metrics"]["train_loss"])

    text = runner.invoke(app, ["runs", "compare", "fast", "slow", "--workspace", str(ws.root)])
    assert "train.learning_rate" in text.output and "0.001" in text.output

    missing = runner.invoke(app, ["runs", "show", "nope", "--workspace", str(ws.root)])
    assert missing.exit_code == 2 and "run 'nope' not found" in missing.output


def test_paths_stay_inside_the_workspace(ws, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    (ws.root / "link-out").symlink_to(tmp_path)
    try:
        with pytest.raises(PathRefused, match=r"'\.\.' is not allowed"):
            ws.resolve("runs/../../etc/passwd")
        with pytest.raises(PathRefused, match="outside the workspace"):
            ws.resolve(str(outside))
        with pytest.raises(PathRefused, match="symlink"):
            ws.resolve("link-out/secret.txt")
        with pytest.raises(PathRefused, match=r"'\.\.' is not allowed"):
            actions.show_run(ws, "../fast")
        with pytest.raises(RunNotFound):
            ws.run_dir("nope")
        assert ws.resolve("train.jsonl") == ws.root / "train.jsonl"
        assert ws.resolve(str(ws.root / "runs" / "fast")) == ws.runs_dir / "fast"
        cli = runner.invoke(app, ["runs", "show", str(outside), "--workspace", str(ws.root)])
        assert cli.exit_code == 2 and "outside the workspace" in cli.output
    finally:
        (ws.root / "link-out").unlink()
