"""The Assistant tab: the workspace's assistant projects (tunesmith assistant init), a build
started from here (a process of its own; stages skip when their inputs are unchanged), where
it stands stage by stage, the gates, and the client's dossier page."""

from __future__ import annotations

import gradio as gr

from tunesmith.ui.common import Ctx, embedded, guarded, refresh_choices, run_picker
from tunesmith.workflows.assistant.stages import STAGE_NAMES
from tunesmith.workshop import actions

ALL_STAGES = "-"


def summary(ctx: Ctx, state: dict | None) -> str:
    """Status, each stage's outcome, the gates' sentences and the build job, as Markdown."""
    if not state:
        return ctx.t("no_assistant")
    lines = [f"### {state['project']}", f"**{ctx.t('status')}**: `{state['status']}`"]
    done = [name for name in STAGE_NAMES if name in state["stages"]]
    if done:
        lines.append(f"**{ctx.t('assistant_stages')}**: " + " → ".join(done))
    for gate in (state["gates"] or {}).get("checks", []):
        lines.append(f"- {'✔' if gate['passed'] else '✘'} {gate['gate']}: {gate['sentence']}")
    job = state["job"]
    if job:
        lines.append(f"build: `{job['status']}` ({job['log']})")
        if job.get("error"):
            lines.append(f"⚠ {job['error']}")
    return "  \n".join(lines)


def dossier(ctx: Ctx, state: dict | None) -> tuple[str, float | None]:
    """The dossier page embedded, and its modification time (a tick redraws it only when the
    build rewrote it)."""
    if not state:
        return "", None
    if not state["dossier"]:
        return ctx.t("no_dossier"), None
    path = ctx.ws.root / state["dossier"]
    return embedded(path, 800), path.stat().st_mtime


def build(ctx: Ctx) -> dict:
    names = actions.assistant_projects(ctx.ws)
    project, refresh = run_picker(ctx, names, "assistant-project", "assistant_project")
    with gr.Row():
        from_stage = gr.Dropdown(
            [ALL_STAGES, *STAGE_NAMES], value=ALL_STAGES, label=ctx.t("assistant_from"), scale=2
        )
        start = gr.Button(ctx.t("assistant_build"), variant="primary", elem_id="assistant-build")
    message = gr.Markdown(elem_id="assistant-message")
    state = gr.Markdown(elem_id="assistant-status")
    page = gr.HTML(elem_id="assistant-dossier")
    shown = gr.State((None, None))  # (project, dossier mtime) on the page now
    timer = gr.Timer(5.0)

    @guarded(1)
    def do_build(p, stage):
        result = actions.assistant_build(ctx.ws, p, None if stage == ALL_STAGES else stage)
        return ctx.t("job_started", kind="assistant build", log=result["log"])

    def tick(p, seen):
        try:
            state = actions.assistant_status(ctx.ws, p) if p else None  # one read a tick
            html, mtime = dossier(ctx, state)
            same = seen == (p, mtime) and mtime is not None
            return summary(ctx, state), gr.skip() if same else html, (p, mtime)
        except Exception:
            return gr.skip(), gr.skip(), seen

    def reload(current):
        return refresh_choices(actions.assistant_projects(ctx.ws), current)

    start.click(do_build, [project, from_stage], message)
    project.change(tick, [project, shown], [state, page, shown])
    timer.tick(tick, [project, shown], [state, page, shown], show_progress="hidden")
    refresh.click(reload, project, project)
    return {"load": (reload, project, project)}
