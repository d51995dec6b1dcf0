"""`tunesmith improve mine | data`: the signal half of the loop (workflows/improve/mine.py,
targeted.py): failures in the served logs ranked as opportunities, then targeted data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.cli.errors import user_errors
from tunesmith.cli.improve import improve_app
from tunesmith.utils.console import console


@improve_app.command("mine")
@user_errors
def mine_command(
    logs: Annotated[Path, typer.Argument(help="The server's log folder (serve --log-dir).")],
    regression: Annotated[
        Path | None,
        typer.Option(help="Regression file: prompts with expected answers / contains checks."),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Folder for opportunities.json / .md and log_rejects.jsonl.")
    ] = Path("improve"),
    model: Annotated[
        str | None,
        typer.Option(
            help="Answers the regression prompts and safety probes (local:<model or run> or a "
            "URL); default: the logged answers."
        ),
    ] = None,
    judge: Annotated[
        str | None, typer.Option(help="A judge for rubric scores (local:<model> or a URL).")
    ] = None,
    arena: Annotated[
        Path | None, typer.Option(help="A run folder whose arena votes count as feedback.")
    ] = None,
    arena_model: Annotated[
        str | None, typer.Option(help="The arena reference of the model being improved.")
    ] = None,
    route: Annotated[str | None, typer.Option(help="Only requests to this route.")] = None,
    version: Annotated[str | None, typer.Option(help="Only this model version.")] = None,
    may_refuse: Annotated[
        list[str] | None, typer.Option(help="A word of prompts it may decline (repeat).")
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="Cosine similarity at which failing prompts group.")
    ] = 0.4,
) -> None:
    """Find failures in served logs, group them into error patterns, rank the opportunities."""
    from tunesmith.workflows.improve.mine import MineSettings, mine

    settings = MineSettings(
        model=model,
        judge=judge,
        arena=str(arena) if arena else None,
        arena_model=arena_model,
        route=route,
        version=version,
        may_refuse=may_refuse or [],
        cluster_threshold=threshold,
        out_dir=str(out),
    )
    report = mine(logs, settings, regression=regression)
    s, o = report.data["stats"], report.overall
    value = "unmeasured" if o["value"] is None else f"{o['value']:.3f}"
    console.print(
        f"{s['requests']} requests, {s['failures']} failures in "
        f"{len(report.data['patterns'])} patterns; overall score {value} "
        f"(coverage {o['coverage']:.0%}); {s['rejected_lines']} log lines rejected"
    )
    table = Table("rank", "id", "type", "priority", "failures", "label")
    for op in report.opportunities[:10]:
        label = ", ".join(op["pattern"]["keywords"]) if op.get("pattern") else ""
        table.add_row(
            str(op["rank"]),
            op["id"],
            op["type"] + (f" ({op['issue_type']})" if op.get("issue_type") else ""),
            op["priority"],
            str(op["frequency"]),
            escape(label),
        )
    console.print(table)
    console.print(f"report: {escape(str(report.path))} and {escape(str(out / 'opportunities.md'))}")


@improve_app.command("data")
@user_errors
def data_command(
    report: Annotated[
        Path, typer.Argument(help="opportunities.json of `improve mine` (or its folder).")
    ],
    original: Annotated[
        Path, typer.Option(help="The original training data (any supported format).")
    ],
    teacher: Annotated[
        str | None,
        typer.Option(
            help="Writes answers and new questions: local:<model or run>, an OpenAI-compatible "
            "URL, or base (the --current run's base model). Without one only user corrections "
            "are used."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: the report's folder).")
    ] = None,
    current: Annotated[
        Path | None, typer.Option(help="The run in production (a --teacher base is its base).")
    ] = None,
    per_pattern: Annotated[int, typer.Option(help="Fix examples wanted per pattern.")] = 16,
    top: Annotated[int | None, typer.Option(help="Only the first N ranked patterns.")] = None,
    held_out: Annotated[
        list[Path] | None,
        typer.Option(help="A file whose prompts must never be trained on (repeat)."),
    ] = None,
) -> None:
    """Targeted examples per error pattern, cleaned and mixed with the original data."""
    from tunesmith.workflows.improve.targeted import TargetedDataSettings, build_targeted_data

    settings = TargetedDataSettings(
        teacher=teacher,
        examples_per_pattern=per_pattern,
        top=top,
        held_out=[str(p) for p in held_out or []],
    )
    result = build_targeted_data(report, original, settings, out_dir=out, current=current)
    s = result.summary
    console.print(
        f"rule: {s['rule']} ({s['failures']} failures, threshold {s['threshold']}); "
        f"original share {s['original_ratio']} (target {s['target_original_ratio']})"
    )
    if s.get("note"):
        console.print(f"[yellow]note:[/yellow] {escape(s['note'])}")
    console.print(
        f"written: {escape(str(result.out_dir))}/{{train,fix,rejects}}.jsonl, data_summary.json"
    )
