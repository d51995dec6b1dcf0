"""`tunesmith improve train | validate | deploy | cycle | demo`: the release half of the loop
(workflows/improve/retrain.py, validate.py, deploy.py, cycle.py, demo/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tunesmith.cli.errors import user_errors
from tunesmith.cli.improve import improve_app
from tunesmith.utils.console import console

SpecArg = Annotated[Path, typer.Argument(help="The improve.yaml project file.")]


@improve_app.command("train")
@user_errors
def train_command(
    spec: SpecArg,
    data: Annotated[
        Path | None,
        typer.Option(help="Training data (default: work_dir/data/train.jsonl of improve data)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="The candidate's run folder name.")] = None,
) -> None:
    """Train the candidate: the production adapter, continued on the targeted data."""
    from tunesmith.workflows.improve.retrain import retrain
    from tunesmith.workflows.improve.spec import load_spec

    improve, root = load_spec(spec)
    candidate = retrain(improve, root, data, name)
    console.print(f"candidate: {escape(str(candidate.run_dir))}")


@improve_app.command("validate")
@user_errors
def validate_command(
    spec: SpecArg,
    candidate: Annotated[Path, typer.Argument(help="The candidate's run folder.")],
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default: work_dir/validate).")
    ] = None,
) -> None:
    """The staged gates: quick check, full evaluation with significance, replayed A/B."""
    from tunesmith.workflows.improve.spec import load_spec, source
    from tunesmith.workflows.improve.validate import validate_candidate

    improve, root = load_spec(spec)
    out = out or source(root, improve.work_dir) / "validate"
    result = validate_candidate(improve, root, candidate, out)
    for name, stage in result["stages"].items():
        mark = "[green]passed[/green]" if stage["passed"] else "[red]failed[/red]"
        console.print(f"{name}: {mark} {escape(stage.get('why') or '')}")
    console.print(f"decision: {result['decision']} (report: {escape(str(out / 'validation.md'))})")
    if result["decision"] != "approved":
        raise typer.Exit(1)


@improve_app.command("deploy")
@user_errors
def deploy_command(
    spec: SpecArg,
    candidate: Annotated[Path, typer.Argument(help="The validated candidate's run folder.")],
    validation: Annotated[
        Path | None,
        typer.Option(help="validation.json (default: work_dir/validate/validation.json)."),
    ] = None,
    opportunities: Annotated[
        Path | None,
        typer.Option(help="opportunities.json (default: work_dir/mine/opportunities.json)."),
    ] = None,
    plan_only: Annotated[
        bool, typer.Option("--plan-only", help="Risk and plan only; the server is not touched.")
    ] = False,
) -> None:
    """Risk assessment, the canary plan, and the canary on the running server."""
    from tunesmith.workflows.improve.deploy import addressed, deploy_candidate
    from tunesmith.workflows.improve.spec import load_spec, source

    improve, root = load_spec(spec)
    work = source(root, improve.work_dir)
    validation = validation or work / "validate" / "validation.json"
    opportunities = opportunities or work / "mine" / "opportunities.json"
    checked = _json(validation, "validation report (run tunesmith improve validate)")
    opps = _json(opportunities, None).get("opportunities", []) if opportunities.is_file() else []
    summary = work / "data" / "data_summary.json"
    opps = addressed(opps, _json(summary, None) if summary.is_file() else None)
    result = deploy_candidate(
        improve, root, candidate, checked, opps, work / "deploy", dry_run=plan_only
    )
    plan = result["plan"]
    console.print(
        f"risk {result['risk_used']}: canary {plan['canary_percentage']}% for "
        f"{plan['canary_duration_h']} h, then {plan['rollout_stages']} every "
        f"{plan['stage_duration_h']} h"
    )
    if not plan_only:
        console.print(f"canary: {result['outcome']} {escape('; '.join(result['breaches']))}")
        if result["outcome"] != "promoted":
            raise typer.Exit(1)


def _json(path: Path, what: str | None) -> dict:
    from tunesmith.utils.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"{path}: no {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


@improve_app.command("cycle")
@user_errors
def cycle_command(
    spec: SpecArg,
    from_stage: Annotated[
        str | None,
        typer.Option("--from", help="Redo this stage and every later one (mine, data, ...)."),
    ] = None,
    until: Annotated[str | None, typer.Option(help="Stop after this stage.")] = None,
    plan_only: Annotated[
        bool, typer.Option("--plan-only", help="Deploy: risk and plan only, no canary.")
    ] = False,
) -> None:
    """One cycle: mine -> data -> train -> validate -> deploy, with cycle.json / cycle.md."""
    from tunesmith.workflows.improve.cycle import run_cycle
    from tunesmith.workflows.improve.spec import load_spec, source

    report = run_cycle(spec, from_stage=from_stage, until=until, plan_only=plan_only)
    improve, root = load_spec(spec)
    m = report["metric"]
    if m:
        console.print(
            f"{m['name']}: {m['before']:.3f} -> {m['after']:.3f} (gain {m['gain']:+.3f}, 95% CI "
            f"{m['ci95'][0]:+.3f} to {m['ci95'][1]:+.3f})"
        )
    console.print(f"decision: {report['decision']}; deploy: {report['deploy']}")
    console.print(f"report: {escape(str(source(root, improve.work_dir) / 'cycle.md'))}")


@improve_app.command("demo")
@user_errors
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder the demo writes everything into.")] = Path(
        "improve-demo"
    ),
) -> None:
    """A served SmolLM2 assistant, a scripted user, one cycle that fixes what it got wrong."""
    from tunesmith.workflows.improve.demo import run_demo

    summary = run_demo(out)
    console.print_json(json.dumps(summary["headline"]))
