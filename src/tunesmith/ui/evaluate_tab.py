"""The Evaluate tab: start a run's evaluation against its base (a process of its own), follow
it, open its report; compare two runs (config, final metrics, and per-item significance when
both were evaluated)."""

from __future__ import annotations

import json

import gradio as gr

from tunesmith.evaluation.compare import compare_scores
from tunesmith.ui.common import (
    Ctx,
    embedded,
    guarded,
    kept_or_none,
    refresh_choices,
    run_names,
    run_picker,
)
from tunesmith.workshop import actions, runs


def job_line(ctx: Ctx, run: str | None, kind: str) -> str:
    if not run:
        return ""
    job = actions.job_status(ctx.ws.run_dir(run), kind)
    if job is None:
        return ctx.t("no_job", kind=kind)
    line = f"{kind}: `{job['status']}` ({job['log']})"
    return line + (f"  \n⚠ {job['error']}" if job.get("error") else "")


def report(ctx: Ctx, run: str | None) -> str:
    if not run:
        return ""
    path = ctx.ws.run_dir(run) / "reports" / "eval.html"
    return embedded(path, 700) if path.is_file() else ctx.t("no_report")


def significance(ctx: Ctx, a: str, b: str) -> list[list]:
    """Per metric: b - a with its bootstrap interval, when both runs hold per-item scores."""
    scores = [_scores(ctx, name) for name in (a, b)]
    if not all(scores):
        return []
    rows = []
    for metric, stat in compare_scores(scores[0], scores[1]).items():
        rows.append([metric, stat["diff"], stat["ci_low"], stat["ci_high"], stat["significant"]])
    return rows


def _scores(ctx: Ctx, run: str) -> dict | None:
    report_ = runs.read_json(ctx.ws.run_dir(run) / "eval.json") or {}
    return ((report_.get("results") or {}).get("model") or {}).get("scores")


def build(ctx: Ctx) -> dict:
    names = run_names(ctx)
    run, refresh = run_picker(ctx, names, "eval-run")
    overrides = gr.Textbox(
        label=ctx.t("overrides"),
        placeholder="eval.max_samples=20",
        max_lines=1,
        elem_id="eval-overrides",
    )
    start = gr.Button(ctx.t("evaluate"), variant="primary", elem_id="eval-start")
    message = gr.Markdown(elem_id="eval-message")
    state = gr.Markdown(elem_id="eval-status")
    shown = gr.HTML(elem_id="eval-report")
    gr.Markdown(f"### {ctx.t('compare')}")
    with gr.Row():
        first = gr.Dropdown(names, label="A")
        second = gr.Dropdown(names, label="B")
        compare = gr.Button(ctx.t("compare"), scale=0, elem_id="eval-compare")
    compare_message = gr.Markdown()
    config = gr.Dataframe(headers=["key", "A", "B"], label=ctx.t("config_diff"))
    metrics = gr.Dataframe(headers=["metric", "A", "B"], label=ctx.t("final_metrics"))
    signif = gr.Dataframe(
        headers=["metric", "B - A", "ci_low", "ci_high", "significant"], label=ctx.t("significance")
    )
    timer = gr.Timer(3.0)

    @guarded(1)
    def do_evaluate(r, text):
        result = actions.evaluate(ctx.ws, r, text.split())
        return ctx.t("job_started", kind="eval", log=result["log"])

    @guarded(4)
    def do_compare(a, b):
        result = actions.compare(ctx.ws, [a, b])
        rows = [[k, *map(_text, v)] for k, v in result["config"].items()]
        values = [[k, *map(_text, v)] for k, v in result["metrics"].items()]
        return "", rows, values, significance(ctx, a, b)

    def tick(r):
        try:
            return job_line(ctx, r, "eval"), report(ctx, r)
        except Exception:
            return gr.skip(), gr.skip()

    start.click(do_evaluate, [run, overrides], message)
    compare.click(do_compare, [first, second], [compare_message, config, metrics, signif])
    run.change(tick, run, [state, shown])
    timer.tick(tick, run, [state, shown], show_progress="hidden")

    def reload(current, a, b):
        names_ = run_names(ctx)
        return [refresh_choices(names_, v) for v in (current, a, b)]

    def opened(a, b):  # a page load: the newest run, as the first open
        names_ = run_names(ctx)
        return refresh_choices(names_), *(kept_or_none(names_, v) for v in (a, b))

    refresh.click(reload, [run, first, second], [run, first, second])
    load = (opened, [first, second], [run, first, second])
    return {"run": run, "names": lambda: run_names(ctx), "load": load}


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)
