"""`tunesmith mcp`: the workshop's actions as MCP tools over stdio, so a coding agent can drive a
fine-tune. The same actions and path rules as the CLI and the UI (tunesmith.workshop)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.utils.errors import TunesmithError

INSTRUCTIONS = (
    "tunesmith fine-tunes pretrained models inside one workspace folder. Every path is relative "
    "to the workspace (or absolute inside it). Typical flow: inspect_data, plan, start_training "
    "(returns at once), training_status until finished, evaluate, compare_runs, export_run. "
    "Config overrides are dotted key=value strings, e.g. 'train.learning_rate=1e-4'."
)


def build_server(root: Path, runs_dir: str = "runs"):
    """The MCP server over the workspace `root`."""
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError:
        raise TunesmithError(
            "tunesmith mcp needs the MCP SDK: pip install 'tunesmith[agent]'"
        ) from None
    from tunesmith.workshop import actions
    from tunesmith.workshop.workspace import Workspace

    ws = Workspace(root, runs_dir)
    server = MCPServer("tunesmith", instructions=INSTRUCTIONS)

    def call(action: Callable[..., dict], *args, **kwargs) -> dict[str, Any]:
        # a user error is the tool's answer (one sentence), not a crash of the server
        try:
            return action(ws, *args, **kwargs)
        except TunesmithError as exc:
            raise ToolError(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from None

    @server.tool()
    def list_runs(
        stage: str | None = None, status: str | None = None, sort: str = "started"
    ) -> dict[str, Any]:
        """Every run of the workspace: name, stage, method, model, data hash, status (running,
        finished, failed, stopped, interrupted), steps, best metric, started, wall time."""
        return call(actions.list_runs, stage, status, sort)

    @server.tool()
    def show_run(run: str) -> dict[str, Any]:
        """One run in full: config, summary, last metrics, alerts, checkpoints, artifacts."""
        return call(actions.show_run, run)

    @server.tool()
    def plan(
        config: str | None = None,
        overrides: list[str] | None = None,
        goal: str = "quality",
        probe: bool = False,
        hardware: str | None = None,
    ) -> dict[str, Any]:
        """Memory, time and method advice for a training config (nothing trains). goal:
        quality | speed | memory; probe: time three real steps instead of the FLOPs estimate;
        hardware: plan for another machine, e.g. cuda:24."""
        return call(actions.plan, config, overrides or [], goal, probe, hardware)

    @server.tool()
    def inspect_data(
        files: list[str],
        out: str | None = None,
        tokenizer: str | None = None,
        cutoff_len: int | None = None,
    ) -> dict[str, Any]:
        """A data quality report (inspect.html + inspect.json): counts, lengths, duplicates,
        PII, scores and recommendations."""
        return call(actions.inspect, files, out, tokenizer, cutoff_len)

    @server.tool()
    def clean_data(
        files: list[str], out: str, settings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Clean data files into `out` (normalize, PII, language, quality, dedup); every removed
        record goes to rejects.jsonl with its reason."""
        return call(actions.clean, files, out, settings)

    @server.tool()
    def start_training(
        config: str | None = None, overrides: list[str] | None = None, name: str | None = None
    ) -> dict[str, Any]:
        """Start training in the background into runs/<name>; returns at once. Poll
        training_status."""
        return call(actions.train, config, overrides or [], name)

    @server.tool()
    def training_status(run: str) -> dict[str, Any]:
        """A run's status, steps, best metric, last metrics, alerts, error sentence, eval and
        export jobs."""
        return call(actions.status, run)

    @server.tool()
    def stop_training(run: str) -> dict[str, Any]:
        """Stop a running training after its current step; it saves a resumable checkpoint."""
        return call(actions.stop, run)

    @server.tool()
    def resume_training(run: str, overrides: list[str] | None = None) -> dict[str, Any]:
        """Continue a stopped or interrupted run from its last checkpoint (in the background)."""
        return call(actions.resume, run, overrides or [])

    @server.tool()
    def evaluate(
        run: str, overrides: list[str] | None = None, config: str | None = None
    ) -> dict[str, Any]:
        """Evaluate a run against its base in the background (eval.* overrides, e.g.
        'eval.data=[test.jsonl]', 'eval.tasks=[generation,perplexity]'); results in eval.json."""
        return call(actions.evaluate, run, overrides or [], config)

    @server.tool()
    def compare_runs(runs: list[str]) -> dict[str, Any]:
        """The config keys that differ between runs and their final metrics side by side."""
        return call(actions.compare, runs)

    @server.tool()
    def export_run(run: str, overrides: list[str] | None = None) -> dict[str, Any]:
        """Export a run in the background: merge, verify against the unmerged model, model
        card (default RUN/export)."""
        return call(actions.export, run, overrides or [])

    @server.tool()
    def list_assistants() -> dict[str, Any]:
        """Assistant projects of the workspace (folders with an assistant.yaml), newest first."""
        return call(lambda w: {"projects": actions.assistant_projects(w)})

    @server.tool()
    def assistant_status(project: str) -> dict[str, Any]:
        """An assistant project's build: status, each stage's record, the gates' sentences,
        known limits, its dossier page, and a running build."""
        return call(actions.assistant_status, project)

    @server.tool()
    def build_assistant(project: str, from_stage: str | None = None) -> dict[str, Any]:
        """Build an assistant project in the background (stages skip when their inputs are
        unchanged; from_stage redoes from that stage); follow it with assistant_status."""
        return call(actions.assistant_build, project, from_stage)

    return server


def serve_mcp(root: Path, runs_dir: str = "runs") -> None:
    build_server(root, runs_dir).run("stdio")
