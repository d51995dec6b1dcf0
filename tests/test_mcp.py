"""`tunesmith mcp` driven by the MCP SDK's own stdio client: the tools, a run listed and shown,
a plan, a refused path, and the one sentence when the SDK is missing."""

from __future__ import annotations

import json
import shutil
import sys

import anyio
import pytest
from helpers import write_alpaca
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.config.load import load_config
from tunesmith.runs.folder import RunFolder

pytest.importorskip("mcp")

TOOLS = {
    "list_runs",
    "show_run",
    "plan",
    "inspect_data",
    "clean_data",
    "start_training",
    "training_status",
    "stop_training",
    "resume_training",
    "evaluate",
    "compare_runs",
    "export_run",
    "list_assistants",
    "assistant_status",
    "build_assistant",
}


@pytest.fixture
def workspace(tmp_path, tiny_model_dir):
    """A workspace with the tiny model, data and one finished run written by the run writer."""
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    write_alpaca(tmp_path / "train.jsonl")
    run = RunFolder(tmp_path / "runs" / "done")
    run.root.mkdir(parents=True)
    run.save_config(load_config(None, ["model.name_or_path=model", "data.train=[train.jsonl]"]))
    run.start_process(data={"train.jsonl": "abc123"})
    run.append_metrics({"step": 1, "loss": 2.5})
    run.write_json("summary.json", {"steps": 1, "train_loss": 2.5, "seconds": 1.0})
    run.end_process()
    return tmp_path


async def _session(workspace, calls):
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "tunesmith.cli.main", "mcp", "--workspace", str(workspace)],
    )
    async with (
        stdio_client(server) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await calls(session)


def _json(result) -> dict:
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


def test_an_agent_lists_shows_plans_and_is_refused_outside(workspace):
    async def calls(session):
        tools = {tool.name for tool in (await session.list_tools()).tools}
        listed = _json(await session.call_tool("list_runs", {}))
        shown = _json(await session.call_tool("show_run", {"run": "done"}))
        overrides = ["model.name_or_path=model", "data.train=[train.jsonl]"]
        plan = _json(await session.call_tool("plan", {"overrides": overrides}))
        refused = await session.call_tool("show_run", {"run": "../../etc"})
        outside = await session.call_tool("inspect_data", {"files": ["/etc/hostname"]})
        assistants = _json(await session.call_tool("list_assistants", {}))
        no_project = await session.call_tool("assistant_status", {"project": "model"})
        return tools, listed, shown, plan, refused, outside, assistants, no_project

    tools, listed, shown, plan, refused, outside, assistants, no_project = anyio.run(
        _session, workspace, calls
    )
    assert tools >= TOOLS
    (row,) = listed["runs"]
    assert (row["name"], row["status"], row["data_hash"], row["steps"]) == (
        "done",
        "finished",
        "abc123",
        1,
    )
    assert shown["summary"]["train_loss"] == 2.5 and shown["config"]["data"]["train"]
    assert plan["data"]["records"] == 8 and plan["parameters"]["trainable"] > 0
    assert refused.is_error and "'..' is not allowed" in refused.content[0].text
    assert outside.is_error and "outside the workspace" in outside.content[0].text
    assert "Traceback" not in refused.content[0].text + outside.content[0].text
    assert assistants == {"projects": []}  # the assistant tools: see tests/test_assistant.py
    assert no_project.is_error and "'model' has no assistant.yaml" in no_project.content[0].text


def test_without_the_sdk_mcp_says_what_to_install(monkeypatch, tmp_path):
    # None in sys.modules makes `import mcp...` raise ImportError, as when it is not installed
    for name in [m for m in sys.modules if m == "mcp" or m.startswith("mcp.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mcp", None)
    result = CliRunner().invoke(app, ["mcp", "--workspace", str(tmp_path)])
    assert result.exit_code == 2
    assert "pip install 'tunesmith[agent]'" in result.output
