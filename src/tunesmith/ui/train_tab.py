"""The Train tab: the schema's form, the YAML it writes (editable: the YAML is what plans and
starts), the planner's answer, Start (queued while another run trains), progress and Stop."""

from __future__ import annotations

import sys
import time

import gradio as gr
import yaml

from tunesmith.config.schema import TrainConfig
from tunesmith.runs.folder import atomic_write
from tunesmith.ui import form, progress
from tunesmith.ui.common import Ctx, guarded
from tunesmith.workshop import actions

CONFIGS = ".tunesmith/ui/configs"  # the YAML each Start ran with, inside the workspace


def component(field: form.FormField, value=None):
    label, info = field.key, field.help or None
    # a stable id per field (tests and scripts find a box by its config key)
    elem = {"elem_id": "f-" + "-".join(filter(None, [field.method, *field.key.split(".")]))}
    shown = form.shown_value(field, value)
    if field.kind == "choice":
        return gr.Dropdown(
            list(field.choices), value=shown, label=label, info=info, min_width=220, **elem
        )
    if field.kind == "bool":
        return gr.Checkbox(value=shown, label=label, info=info, min_width=220, **elem)
    if field.kind in ("int", "float"):
        return gr.Number(
            value=shown,
            label=label,
            info=info,
            precision=0 if field.kind == "int" else None,
            min_width=220,
            **elem,
        )
    return gr.Textbox(value=shown, label=label, info=info, max_lines=1, min_width=220, **elem)


def save_yaml(ctx: Ctx, text: str) -> str:
    """The page's YAML as a config file of the workspace (relative path for the actions)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"the YAML does not parse: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError("the YAML must be a mapping of sections (model, method, data, train)")
    relative = f"{CONFIGS}/{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**6}.yaml"
    path = ctx.ws.resolve(relative, "config")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    return relative


def plan_text(ctx: Ctx, plan: dict) -> str:
    memory = plan["memory"][plan["hardware"]["device"]] if plan.get("memory") else {}
    timing, advice = plan.get("time") or {}, (plan.get("advice") or {}).get("recommended") or {}
    lines = [
        f"**{ctx.t('memory')}**: {memory.get('total', 0) / 2**30:.2f} GB "
        f"({ctx.t('fits') if plan.get('fits') else ctx.t('does_not_fit')})",
        f"**{ctx.t('time')}**: {timing.get('seconds', 0):.0f} s, {timing.get('steps')} "
        f"{ctx.t('steps')} ({timing.get('method')})",
        f"**{ctx.t('trainable')}**: {plan['parameters']['trainable']:,} / "
        f"{plan['parameters']['total']:,}",
    ]
    if advice:
        lines.append(f"**{ctx.t('advice')}**: {advice.get('method')} — {advice.get('why')}")
        lines.append("`" + " ".join(advice.get("overrides", [])) + "`")
    return "  \n".join(lines)


def status_text(ctx: Ctx, run: str | None) -> tuple[str, str]:
    """(progress line, log tail) of the run this page follows."""
    if not run:
        return ctx.t("no_run_yet"), ""
    state = actions.status(ctx.ws, run)
    root = ctx.ws.root / state["path"]
    step = progress.progress(root)
    parts = [f"**{run}**: `{state['status']}`"]
    if step["step"] is not None:
        total = f" / {step['total']}" if step["total"] else ""
        parts.append(f"{ctx.t('step')} {step['step']}{total}")
    if step["tokens_per_s"]:
        parts.append(f"{step['tokens_per_s']:.0f} tokens/s")
    if step["eta_s"] is not None and state["status"] == "running":
        parts.append(f"ETA {step['eta_s']:.0f} s")
    if state.get("error"):
        parts.append(f"{ctx.t('error')}: {state['error']}")
    return " · ".join(parts), progress.log_tail(root)


def queue_text(ctx: Ctx) -> str:
    queue = actions.queued(ctx.ws)["queue"]
    if not queue:
        return ctx.t("queue_empty")
    names = [entry["name"] or ctx.t("unnamed") for entry in queue]
    return ctx.t("queue", n=len(queue), names=", ".join(names))


def build(ctx: Ctx, default_model: str) -> dict:
    fields = form.form_fields()
    defaults = {"model.name_or_path": default_model}
    comps, stage_comps, method_comps, groups, stage_groups = [], [], [], {}, {}
    stage_default = TrainConfig.model_fields["stage"].default
    with gr.Row():
        with gr.Column(scale=3):
            method = gr.Dropdown(list(form.METHODS), value="lora", label="method.type")
            for name in form.METHODS:  # each method's own fields, shown for the chosen one
                with gr.Group(visible=name == "lora") as groups[name], gr.Row():
                    for field in [f for f in fields if f.method == name]:
                        method_comps.append(component(field))
            for section in form.SECTIONS:
                with gr.Accordion(section, open=True), gr.Row():
                    for field in _plain(fields, section):
                        comps.append(component(field, defaults.get(field.key)))
            for section, stages in form.stage_sections().items():  # shown for their stages
                with (
                    gr.Accordion(
                        f"train.{section}",
                        visible=stage_default in stages,
                        elem_id=f"stage-{section}",
                    ) as stage_groups[section],
                    gr.Row(),
                ):
                    for field in [f for f in fields if f.key.startswith(f"train.{section}.")]:
                        stage_comps.append(component(field))
        with gr.Column(scale=2):
            initial = form.form_yaml(
                fields, [_initial(f, defaults) for f in _ordered(fields)], "lora"
            )
            text = gr.Code(
                initial, language="yaml", interactive=True, label="YAML", elem_id="train-yaml"
            )
            with gr.Row():
                plan_button = gr.Button(ctx.t("plan"), elem_id="train-plan")
                start = gr.Button(ctx.t("start"), variant="primary", elem_id="train-start")
                stop = gr.Button(ctx.t("stop"), variant="stop", elem_id="train-stop")
            message = gr.Markdown(elem_id="train-message")
            planned = gr.Markdown(elem_id="train-plan-out")
            status = gr.Markdown(elem_id="train-status")
            tail = gr.Textbox(
                lines=8, label=ctx.t("log_tail"), interactive=False, elem_id="train-log"
            )
            queue = gr.Markdown(queue_text(ctx), elem_id="train-queue")
    following = gr.State(None)  # the run this page started (reload: the running one)
    timer = gr.Timer(2.0)
    ordered = _ordered(fields)
    comps = comps + stage_comps + method_comps  # the order of _ordered
    stage_at = [f.key for f in ordered].index("train.stage")

    def rewrite(kind, *values):
        return (
            form.form_yaml(ordered, list(values), kind),
            *_visibility(kind),
            *_stage_visibility(values[stage_at]),
        )

    gr.on(
        [c.change for c in [method, *comps]],
        rewrite,
        [method, *comps],
        [text, *groups.values(), *stage_groups.values()],
        show_progress="hidden",
    )

    @guarded(2)
    def do_plan(yaml_text):
        return "", plan_text(ctx, actions.plan(ctx.ws, save_yaml(ctx, yaml_text)))

    @guarded(2)
    def do_start(yaml_text):
        config = save_yaml(ctx, yaml_text)
        name = (yaml.safe_load(yaml_text) or {}).get("output", {}).get("name")
        result = actions.enqueue(ctx.ws, config, (), name)
        started = result["started"]
        if started and started.get("status") == "failed":
            return f"⚠ {started['error']}", gr.skip()
        if started:
            return ctx.t("started", run=started["run"]), started["run"]
        return ctx.t("queued", n=len(result["queue"])), gr.skip()

    @guarded(1)
    def do_stop(run):
        run = run or _running(ctx)
        if not run:
            return ctx.t("nothing_running")
        return actions.stop(ctx.ws, run)["message"]

    def tick(run):
        started = actions.start_queued(ctx.ws)  # the queue moves while a page is open
        run = (started or {}).get("run") or run or _running(ctx) or _newest(ctx)
        line, log_tail = status_text(ctx, run)
        return run, line, log_tail, queue_text(ctx)

    plan_button.click(do_plan, text, [message, planned])
    start.click(do_start, text, [message, following])
    stop.click(do_stop, following, message)
    timer.tick(_quiet(tick, 4), following, [following, status, tail, queue], show_progress="hidden")
    return {"fields": ordered, "components": comps, "method": method, "yaml": text}


def _plain(fields: list[form.FormField], section: str) -> list[form.FormField]:
    """A section's own fields (not a method's, not a stage section's)."""
    return [f for f in fields if f.key.startswith(f"{section}.") and not f.method and not f.stages]


def _ordered(fields: list[form.FormField]) -> list[form.FormField]:
    """The fields in the order their components were made: sections, stage sections, then
    each method's."""
    sections = [f for s in form.SECTIONS for f in _plain(fields, s)]
    stages = [f for f in fields if f.stages]
    return sections + stages + [f for name in form.METHODS for f in fields if f.method == name]


def _initial(field: form.FormField, defaults: dict):
    return form.shown_value(field, defaults.get(field.key))


def _visibility(kind: str):
    return [gr.update(visible=name == kind) for name in form.METHODS]


def _stage_visibility(stage: str):
    return [gr.update(visible=stage in stages) for stages in form.stage_sections().values()]


def _running(ctx: Ctx) -> str | None:
    running = actions.queued(ctx.ws)["running"]
    return running[0] if running else None


def _newest(ctx: Ctx) -> str | None:
    rows = actions.list_runs(ctx.ws)["runs"]
    return rows[0]["name"] if rows else None


def _quiet(tick, n: int):
    def run(*args):
        try:
            return tick(*args)
        except Exception as exc:  # a folder mid-write: the next tick catches up
            print(f"tick skipped: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return tuple([gr.skip()] * n)

    return run
