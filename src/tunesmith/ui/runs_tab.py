"""The Runs tab: the runs table (filter, sort) and a run's page (facts, live curves, alerts,
config, the plan it started with, reports, and resume / evaluate / export / chat)."""

from __future__ import annotations

import json

import gradio as gr
import yaml

from tunesmith.ui import progress
from tunesmith.ui.common import Ctx, embedded, guarded, refresh_choices, run_names
from tunesmith.workshop import actions, runs

COLUMNS = ("name", "stage", "method", "model", "data_hash", "status", "steps", "best", "started")
ALL = "*"


def table(ctx: Ctx, stage: str, status: str, sort: str) -> list[list]:
    listed = actions.list_runs(
        ctx.ws, None if stage == ALL else stage, None if status == ALL else status, sort
    )
    return [[_cell(row, c) for c in COLUMNS] + [_seconds(row)] for row in listed["runs"]]


def _cell(row: dict, column: str):
    if column == "best":
        best = row.get("best")
        return f"{best['name']} {best['value']:.4g}" if best else ""
    value = row.get(column)
    return "" if value is None else value


def _seconds(row: dict) -> str:
    return "" if row["wall_seconds"] is None else f"{row['wall_seconds']:.0f} s"


def facts(ctx: Ctx, shown: dict) -> str:
    lines = [f"### {shown['name']}", f"**{ctx.t('status')}**: `{shown['status']}`"]
    if shown.get("error"):
        lines.append(f"**{ctx.t('error')}**: {shown['error']}")  # the sentence, never a trace
    step = progress.progress(ctx.ws.root / shown["path"])
    total = f" / {step['total']}" if step["total"] else ""
    lines.append(f"**{ctx.t('steps')}**: {step['step'] or 0}{total}")
    for key in ("stage", "method", "model", "data_hash", "checkpoint", "started"):
        if shown.get(key):
            lines.append(f"**{key}**: `{shown[key]}`")
    lines.append(f"**{ctx.t('artifacts')}**: {', '.join(shown['artifacts']) or '-'}")
    return "  \n".join(lines)


def points_line(ctx: Ctx, frames: dict) -> str:
    loss = frames["loss"]
    if loss.empty:
        return ctx.t("no_points")
    return ctx.t("points", n=len(loss), step=int(loss["step"].iloc[-1]), loss=loss["loss"].iloc[-1])


def page(ctx: Ctx, run: str | None):
    """Everything of a run's page, in the order of `page_outputs`."""
    if not run:
        return ("", ctx.t("no_points"), *[None] * 3, [], "", "", "", None)
    return _page_of(ctx, actions.show_run(ctx.ws, run))


def _page_of(ctx: Ctx, shown: dict):
    root = ctx.ws.root / shown["path"]
    frames = progress.curves(root)
    alerts = [[a.get("step"), a.get("kind"), a.get("message")] for a in shown["alerts"]]
    report = root / "reports" / "eval.html"
    plot = root / "plots" / "training.png"
    return (
        facts(ctx, shown),
        points_line(ctx, frames),
        *(frames[name] for name in progress.CURVES),
        alerts,
        yaml.safe_dump(shown["config"] or {}, sort_keys=False, allow_unicode=True),
        progress.started_plan(root) or ctx.t("no_plan"),
        embedded(report) if report.is_file() else ctx.t("no_report"),
        str(plot) if plot.is_file() else None,
    )


def stamp(ctx: Ctx, shown: dict) -> list:
    """What a run's page shows that changes after its training ends: its status, artifacts and
    report (a tick redraws a finished run's page only when one of these moved)."""
    report = ctx.ws.root / shown["path"] / "reports" / "eval.html"
    when = report.stat().st_mtime if report.is_file() else None
    return [shown["name"], shown["status"], shown["artifacts"], when]


def build(ctx: Ctx) -> dict:
    names = run_names(ctx)
    with gr.Row():
        stage = gr.Dropdown([ALL, *_stages()], value=ALL, label=ctx.t("stage"), scale=1)
        status = gr.Dropdown([ALL, *runs.STATUSES], value=ALL, label=ctx.t("status"), scale=1)
        sort = gr.Dropdown(list(runs.SORT_KEYS), value="started", label=ctx.t("sort"), scale=1)
        refresh = gr.Button(ctx.t("refresh"), scale=0)
    grid = gr.Dataframe(
        value=table(ctx, ALL, ALL, "started"),
        headers=[*COLUMNS, "wall"],
        interactive=False,
        elem_id="runs-table",
    )
    run = gr.Dropdown(names, value=names[0] if names else None, label=ctx.t("run"))
    message = gr.Markdown(elem_id="runs-message")
    with gr.Row():
        resume = gr.Button(ctx.t("resume"), elem_id="runs-resume")
        evaluate = gr.Button(ctx.t("evaluate"), elem_id="runs-evaluate")
        export = gr.Button(ctx.t("export"), elem_id="runs-export")
        chat = gr.Button(ctx.t("chat"), elem_id="runs-chat")
    about = gr.Markdown(elem_id="run-facts")
    points = gr.Markdown(elem_id="run-points")
    with gr.Row():
        plots = [gr.LinePlot(x="step", y=name, label=name, height=220) for name in progress.CURVES]
    alerts = gr.Dataframe(headers=["step", "kind", "message"], label=ctx.t("alerts"))
    with gr.Accordion(ctx.t("config"), open=False):
        config = gr.Code(language="yaml", interactive=False)
    with gr.Accordion(ctx.t("plan"), open=False):
        plan = gr.Textbox(lines=4, show_label=False, interactive=False)
    with gr.Accordion(ctx.t("reports"), open=True):
        report = gr.HTML(elem_id="run-report")
        image = gr.Image(label=ctx.t("training_plot"), interactive=False, height=300)
    timer = gr.Timer(2.0)
    seen = gr.State(None)  # the stamp of the page last drawn

    page_outputs = [about, points, *plots, alerts, config, plan, report, image]
    filters = [stage, status, sort]
    show_page = guarded(1)(lambda r: page(ctx, r))

    def reload(stage_, status_, sort_, current):
        return table(ctx, stage_, status_, sort_), refresh_choices(run_names(ctx), current)

    def reopen(stage_, status_, sort_, current):
        """Refresh: the table, the run list and the chosen run's page, all read again."""
        rows, listed = reload(stage_, status_, sort_, current)
        return rows, listed, *_safe_page(ctx, listed["value"], show_page)

    def opened(stage_, status_, sort_):
        # a page load (a reload too) starts from the newest run, as the first open does: the
        # lists made when the server started are stale by now
        return reopen(stage_, status_, sort_, None)

    def tick(stage_, status_, sort_, current, seen_):
        rows = table(ctx, stage_, status_, sort_)
        shown = current and actions.show_run(ctx.ws, current)
        now = shown and stamp(ctx, shown)
        if not shown or (shown["status"] != "running" and now == seen_):
            return (rows, gr.skip(), *[gr.skip()] * len(page_outputs))
        return (rows, now, *_page_of(ctx, shown))  # live, or it just ended or got a report

    def picked(evt: gr.SelectData, rows):
        return rows.iloc[evt.index[0]]["name"] if evt.index else gr.skip()

    for control in filters:
        control.change(reload, [*filters, run], [grid, run])
    refresh.click(reopen, [*filters, run], [grid, run, *page_outputs])
    grid.select(picked, grid, run)
    run.change(lambda r: _safe_page(ctx, r, show_page), run, page_outputs)
    timer.tick(
        _guard_tick(tick, len(page_outputs) + 2),
        [*filters, run, seen],
        [grid, seen, *page_outputs],
        show_progress="hidden",
    )

    @guarded(1)
    def do_resume(r):
        return _said(actions.resume(ctx.ws, r))

    resume.click(do_resume, run, message)
    load = (opened, filters, [grid, run, *page_outputs])
    return {"run": run, "evaluate": evaluate, "export": export, "chat": chat, "load": load}


def _stages() -> list[str]:
    from tunesmith.config.schema import TrainConfig

    return [*TrainConfig.model_fields["stage"].annotation.__args__, "eval"]


def _safe_page(ctx: Ctx, run, show_page):
    result = show_page(run)
    if isinstance(result, str):  # the error sentence: shown where the facts go
        return (result, *[gr.skip()] * 9)
    return result


def _guard_tick(tick, n: int):
    def run(*args):
        try:
            return tick(*args)
        except Exception:  # a run folder being written mid-read: the next tick catches up
            return tuple([gr.skip()] * n)

    return run


def _said(result: dict) -> str:
    return "✓ " + json.dumps(result, ensure_ascii=False)
