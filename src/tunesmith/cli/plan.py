"""`tunesmith plan CONFIG`: print the plan as rich tables; write plan.json when asked."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from tunesmith.plan.estimate import Plan
from tunesmith.plan.memory import GB
from tunesmith.utils.console import console

_ROWS = [
    ("weights", "weights"),
    ("gradients", "gradients"),
    ("optimizer (AdamW)", "optimizer"),
    ("master weights", "master_weights"),
    ("activations", "activations"),
    ("logits + loss", "logits"),
    ("framework overhead", "overhead"),
]


def plan_command(
    config_path: Path | None,
    overrides: list[str],
    goal: str,
    probe: bool,
    json_out: Path | None,
    hardware: str | None,
) -> None:
    from tunesmith.config.load import load_config
    from tunesmith.plan.hardware import parse_hardware
    from tunesmith.plan.planner import make_plan

    config = load_config(config_path, overrides)
    target = parse_hardware(hardware) if hardware else None
    plan = make_plan(config, goal=goal, probe=probe, hardware=target)
    show_plan(plan)
    if json_out:
        write_plan(plan, json_out)


def show_plan(plan: Plan) -> None:
    s, hw = plan.facts.shapes, plan.hardware
    console.print(
        f"[bold]plan[/bold] {escape(plan.facts.ref)} ({s.model_type}, {s.layers} layers, hidden "
        f"{s.hidden}): {plan.config.method.type} trains {plan.trainable:,} of "
        f"{plan.facts.total:,} base parameters ({100 * plan.trainable / plan.facts.total:.3f}%)"
    )
    console.print(f"data: {escape(_data_line(plan))}")
    console.print(memory_table(plan))
    verdict = "[green]fits[/green]" if plan.fits else "[red]does NOT fit[/red]"
    console.print(f"on this machine ({hw.describe()}): {plan.here.total / GB:.2f} GB, {verdict}")
    if plan.time:
        t = plan.time
        console.print(
            f"time ({t.method}): {t.tokens_per_second:,.3g} tokens/s, {t.tokens:,} tokens in "
            f"{t.steps:,} steps: ~{_duration(t.seconds)}  [dim]{escape(t.note)}[/dim]"
        )
    if plan.advice:
        show_advice(plan.advice)


def memory_table(plan: Plan) -> Table:
    table = Table(title="peak training memory (GB)")
    table.add_column("part")
    for device in plan.memory:
        table.add_column(device.upper(), justify="right")
    for label, key in _ROWS:
        values = [getattr(m, key) for m in plan.memory.values()]
        if any(values):
            table.add_row(label, *(f"{v / GB:.2f}" for v in values))
    table.add_row(
        "[bold]total[/bold]", *(f"[bold]{m.total / GB:.2f}" for m in plan.memory.values())
    )
    return table


def show_advice(advice) -> None:
    rec = advice.recommended
    console.print(
        f"[bold]advice[/bold] (goal {advice.goal}): [bold]{rec.method}[/bold] "
        f"({rec.memory / GB:.2f} GB)"
    )
    console.print("  " + escape(" ".join(rec.overrides)))
    for reason in advice.reasons:
        console.print(f"  - {escape(reason)}")
    for alt in advice.alternatives:
        fits = "fits" if alt.fits else "does not fit"
        console.print(f"  alternative {alt.method} ({alt.memory / GB:.2f} GB, {fits}): {alt.why}")
    for warning in advice.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if advice.fixes:
        console.print("[yellow]to make it fit:[/yellow] " + escape(" ".join(advice.fixes)))


def write_plan(plan: Plan, path: Path) -> None:
    path.write_text(json.dumps(plan.as_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"wrote {path}")


def _data_line(plan: Plan) -> str:
    d = plan.data
    if d.records is None:
        return d.note
    # a classifier's loss is one label per text: no share of positions to report
    trained = (
        ""
        if plan.config.train.stage == "cls"
        else f"{100 * d.trained_fraction:.0f}% of positions trained "
    )
    return f"{d.records:,} records, ~{d.tokens:,} tokens, longest {d.longest}, {trained}({d.note})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
