"""`tunesmith runs list|show|compare`: the workshop's runs table in the terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.cli.errors import user_errors
from tunesmith.utils.console import console

runs_app = typer.Typer(help="List, show and compare the run folders of a workspace.")

WorkspaceDir = Annotated[
    Path, typer.Option("--workspace", help="Workspace folder (its runs/ holds the runs).")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
COLUMNS = ("name", "stage", "method", "model", "data_hash", "status", "steps", "best", "started")


def _workspace(root: Path, runs_dir: str):
    from tunesmith.workshop.workspace import Workspace

    return Workspace(root, runs_dir)


@runs_app.command("list")
@user_errors
def list_(
    workspace: WorkspaceDir = Path("."),
    runs_dir: Annotated[str, typer.Option(help="Runs folder inside the workspace.")] = "runs",
    stage: Annotated[str | None, typer.Option(help="Only runs of this train.stage.")] = None,
    status: Annotated[
        str | None, typer.Option(help="running | finished | failed | stopped | interrupted")
    ] = None,
    sort: Annotated[
        str, typer.Option(help="started | name | stage | method | model | status | steps | best")
    ] = "started",
    as_json: Json = False,
):
    """Every run folder as a table: stage, method, model, data hash, status, steps, best."""
    from tunesmith.workshop import actions

    result = actions.list_runs(_workspace(workspace, runs_dir), stage, status, sort)
    if as_json:
        _print_json(result)
        return
    table = Table(title=f"runs in {result['runs_dir']}")
    for column in (*COLUMNS, "wall"):
        table.add_column(column)
    for row in result["runs"]:
        table.add_row(*(escape(_cell(row, c)) for c in COLUMNS), _seconds(row["wall_seconds"]))
    console.print(table)
    for row in result["runs"]:
        if row["error"]:
            console.print(f"{escape(row['name'])}: {escape(row['error'])}", markup=True)


@runs_app.command()
@user_errors
def show(
    run: Annotated[str, typer.Argument(help="Run name (in the runs folder) or path.")],
    workspace: WorkspaceDir = Path("."),
    runs_dir: Annotated[str, typer.Option(help="Runs folder inside the workspace.")] = "runs",
    as_json: Json = False,
):
    """One run: its row, summary, last metrics, alerts, checkpoints and artifacts."""
    from tunesmith.workshop import actions

    shown = actions.show_run(_workspace(workspace, runs_dir), run)
    if as_json:
        _print_json(shown)
        return
    for key in (*COLUMNS, "error", "wall_seconds", "checkpoint", "path"):
        console.print(f"{key}: {escape(_cell(shown, key))}")
    console.print(f"checkpoints: {', '.join(shown['checkpoints']) or '-'}")
    console.print(f"artifacts: {', '.join(shown['artifacts']) or '-'}")
    if shown["last_metrics"]:
        console.print(f"last metrics: {escape(json.dumps(shown['last_metrics']))}")
    for alert in shown["alerts"]:
        console.print(f"[yellow]alert[/yellow] {escape(json.dumps(alert))}")


@runs_app.command()
@user_errors
def compare(
    run_names: Annotated[list[str], typer.Argument(help="Two or more runs.")],
    workspace: WorkspaceDir = Path("."),
    runs_dir: Annotated[str, typer.Option(help="Runs folder inside the workspace.")] = "runs",
    as_json: Json = False,
):
    """The config keys that differ and the final metrics, run beside run."""
    from tunesmith.workshop import actions

    result = actions.compare(_workspace(workspace, runs_dir), run_names)
    if as_json:
        _print_json(result)
        return
    for title, rows in (("config (differing keys)", "config"), ("final metrics", "metrics")):
        table = Table(title=title)
        table.add_column("key")
        for name in result["runs"]:
            table.add_column(name)
        for key, values in result[rows].items():
            table.add_row(escape(key), *(escape(_value(v)) for v in values))
        console.print(table)


def _cell(row: dict, column: str) -> str:
    if column == "best":
        best = row.get("best")
        return f"{best['name']} {best['value']:.4g}" if best else "-"
    return _value(row.get(column))


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def _print_json(data: Any) -> None:
    # plain print: JSON for a pipe, never wrapped or coloured by rich
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
