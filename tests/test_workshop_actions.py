"""The workshop's actions: plan, inspect and clean in a workspace; train in a process of its own
that is running, stopped (a resumable checkpoint) and resumed; paths outside refused."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from helpers import write_alpaca

from tunesmith.runs.folder import RunFolder
from tunesmith.utils.errors import TunesmithError
from tunesmith.workshop import actions
from tunesmith.workshop.workspace import PathRefused, Workspace


@pytest.fixture
def ws(tmp_path, tiny_model_dir) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copytree(tiny_model_dir, root / "model")
    write_alpaca(root / "train.jsonl")
    (root / "run.yaml").write_text(
        "model: {name_or_path: model}\n"
        "method: {type: lora, r: 4}\n"
        "data: {train: [train.jsonl]}\n"
        "train: {batch_size: 2, save_steps: 1000, logging_steps: 1, max_steps: 3000}\n",
        encoding="utf-8",
    )
    return Workspace(root)


def test_plan_reads_relative_paths_of_the_workspace(ws):
    plan = actions.plan(ws, "run.yaml")
    assert plan["data"]["records"] == 8  # data.train read from the workspace, not the cwd
    assert plan["parameters"]["trainable"] > 0 and isinstance(plan["fits"], bool)
    json.dumps(plan)  # plain data for every door


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.train=[../outside.jsonl]", r"'\.\.' is not allowed"),
        ("data.train=[/etc/passwd]", "outside the workspace"),
        ("model.name_or_path=/usr", "outside the workspace"),
        ("data.train=[out/x.jsonl]", "symlink"),
    ],
)
def test_paths_in_configs_are_refused_outside_the_workspace(ws, tmp_path, override, message):
    (ws.root / "out").symlink_to(tmp_path)
    with pytest.raises(PathRefused, match=message):
        actions.plan(ws, "run.yaml", [override])
    with pytest.raises(PathRefused, match=message):
        actions.train(ws, "run.yaml", [override])
    assert not ws.runs_dir.exists()  # nothing started


def test_inspect_and_clean_stay_in_the_workspace(ws):
    report = actions.inspect(ws, ["train.jsonl"])
    assert report["records"]["read"] == 8 and report["json"] == "inspect/inspect.json"
    cleaned = actions.clean(ws, ["train.jsonl"], "clean/train.jsonl")
    assert cleaned["read"] == cleaned["kept"] + cleaned["rejected"] == 8
    assert (ws.root / "clean" / "train.jsonl").is_file()
    with pytest.raises(PathRefused):
        actions.clean(ws, ["train.jsonl"], "../clean.jsonl")
    with pytest.raises(TunesmithError, match="clean: unknown_step"):
        actions.clean(ws, ["train.jsonl"], "c.jsonl", {"unknown_step": 1})


def test_a_dataset_info_entry_is_read_with_its_columns(ws):
    """LLaMA-Factory's dataset_info.json as the Data tab and MCP name it: REGISTRY::NAME, the
    entry's format and column mapping applied; hub-only entries are not listed (offline)."""
    data = ws.root / "lf"
    data.mkdir()
    records = [
        {"dialog": [{"role": "user", "text": f"question {i}"}, {"role": "bot", "text": f"a{i}"}]}
        for i in range(5)
    ]
    (data / "chats.json").write_text(json.dumps(records), encoding="utf-8")
    registry = {
        "chats": {
            "file_name": "chats.json",
            "formatting": "sharegpt",
            "columns": {"messages": "dialog"},
            "tags": {"role_tag": "role", "content_tag": "text", "user_tag": "user",
                     "assistant_tag": "bot"},
        },
        "far_away": {"hf_hub_url": "someone/data"},
        "outside": {"file_name": "../../elsewhere.json"},
    }  # fmt: skip
    (data / "dataset_info.json").write_text(json.dumps(registry), encoding="utf-8")
    (ws.root.parent / "elsewhere.json").write_text("[]", encoding="utf-8")
    assert actions.dataset_entries(ws, "lf/dataset_info.json") == [
        "lf/dataset_info.json::chats",
        "lf/dataset_info.json::outside",
    ]
    report = actions.inspect(ws, ["lf/dataset_info.json::chats"])
    assert report["records"]["read"] == 5 and report["records"].get("rejected", 0) == 0
    cleaned = actions.clean(ws, ["lf/dataset_info.json::chats"], "clean/chats.jsonl")
    assert cleaned["read"] == 5 and cleaned["kept"] + cleaned["rejected"] == 5
    converted = actions.convert(ws, "lf/dataset_info.json::chats", "conv/chats.jsonl", "openai")
    first = json.loads((ws.root / converted["output"]).read_text().splitlines()[0])
    assert first["messages"][-1] == {"role": "assistant", "content": "a0"}
    with pytest.raises(PathRefused, match=r"dataset 'outside' file .* is not allowed"):
        actions.inspect(ws, ["lf/dataset_info.json::outside"])
    with pytest.raises(TunesmithError, match="nope"):
        actions.inspect(ws, ["lf/dataset_info.json::nope"])


def _wait(predicate, what: str, seconds: float = 240):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_train_runs_in_its_own_process_stops_resumably_and_resumes(ws):
    started = time.monotonic()
    launched = actions.train(ws, "run.yaml", name="live")
    assert time.monotonic() - started < 5  # returns at once; training goes on
    assert launched["run"] == "live" and launched["status"] == "running"

    def training() -> dict | None:
        status = actions.status(ws, "live")
        assert status["status"] == "running", status
        return status if (status["steps"] or 0) >= 3 else None

    status = _wait(training, "three logged steps")
    assert status["last_metrics"]["loss"] > 0
    listed = {r["name"]: r for r in actions.list_runs(ws, status="running")["runs"]}
    assert list(listed) == ["live"]

    stopping = actions.stop(ws, "live")
    assert stopping["status"] == "stopping"
    row = _wait(
        lambda: (s := actions.status(ws, "live"))["status"] != "running" and s, "the stop", 120
    )
    assert row["status"] == "stopped" and "SIGTERM" in row["error"], row
    run = RunFolder(ws.runs_dir / "live")
    checkpoint = run.last_checkpoint()
    assert checkpoint is not None and row["checkpoint"] == checkpoint.name
    at = int(checkpoint.name.split("-")[1])
    with pytest.raises(TunesmithError, match="is not running"):
        actions.stop(ws, "live")

    actions.resume(ws, "live", [f"train.max_steps={at + 2}"])
    done = _wait(
        lambda: (s := actions.status(ws, "live"))["status"] not in ("running",) and s, "resume"
    )
    assert done["status"] == "finished", done
    summary = json.loads((run.root / "summary.json").read_text())
    assert summary["resumed_from"] == str(checkpoint) and summary["steps"] == at + 2
    assert len(list((run.root / "logs").glob("train-*.log"))) >= 1
