"""The Export / Serve tab: export a run (merge, verify, card; a process of its own) and read
its verification; start and stop the workspace's OpenAI-compatible server, with its URL and a
curl example."""

from __future__ import annotations

import json

import gradio as gr

from tunesmith.ui.common import Ctx, guarded, refresh_choices, run_picker, trained_runs
from tunesmith.ui.evaluate_tab import job_line
from tunesmith.workshop import actions, runs


def verification(ctx: Ctx, run: str | None) -> str:
    """The export's facts (export.json): where it is and what verification found."""
    if not run:
        return ""
    facts = runs.read_json(ctx.ws.run_dir(run) / "export" / "export.json")
    if not facts:
        return ctx.t("not_exported")
    shown = {k: facts[k] for k in ("verification", "layout", "gguf") if k in facts}
    folder = ctx.ws.relative(ctx.ws.run_dir(run) / "export")
    return f"`{folder}`\n```json\n{json.dumps(shown, indent=1, default=str)[:3000]}\n```"


def server_text(ctx: Ctx) -> str:
    record = runs.read_json(ctx.ws.root / actions.SERVE_RECORD)
    if not record or not runs.process_alive(record):
        return ctx.t("server_off")
    url = f"http://127.0.0.1:{record['port']}/v1"
    curl = (
        f"curl {url}/chat/completions -H 'Content-Type: application/json' "
        '-d \'{"model": "RUN_NAME", "messages": [{"role": "user", "content": "Hello"}]}\''
    )
    head = f"{ctx.t('server_on')}: {url} (pid {record['pid']}, log `{record['log']}`)"
    return f"{head}\n```bash\n{curl}\n```"


def build(ctx: Ctx) -> dict:
    run, refresh = run_picker(ctx, trained_runs(ctx), "export-run")
    overrides = gr.Textbox(label=ctx.t("overrides"), placeholder="export.gguf=true", max_lines=1)
    export = gr.Button(ctx.t("export"), variant="primary", elem_id="export-start")
    message = gr.Markdown(elem_id="export-message")
    state = gr.Markdown(elem_id="export-status")
    facts = gr.Markdown(elem_id="export-facts")
    gr.Markdown(f"### {ctx.t('serve')}")
    with gr.Row():
        model = gr.Textbox(label=ctx.t("base_model"), value="smollm2-135m-instruct", max_lines=1)
        port = gr.Number(8000, precision=0, label="port")
        serve = gr.Button(ctx.t("serve_start"), elem_id="serve-start")
        halt = gr.Button(ctx.t("serve_stop"), elem_id="serve-stop")
    server = gr.Markdown(server_text(ctx), elem_id="serve-status")
    timer = gr.Timer(3.0)

    @guarded(1)
    def do_export(r, text):
        result = actions.export(ctx.ws, r, text.split())
        return ctx.t("job_started", kind="export", log=result["log"])

    @guarded(1)
    def do_serve(ref, number):
        return json.dumps(actions.serve_start(ctx.ws, ref, int(number)))

    @guarded(1)
    def do_halt():
        return json.dumps(actions.serve_stop(ctx.ws))

    def tick(r):
        try:
            return job_line(ctx, r, "export"), verification(ctx, r), server_text(ctx)
        except Exception:
            return gr.skip(), gr.skip(), gr.skip()

    export.click(do_export, [run, overrides], message)
    serve.click(do_serve, [model, port], message)
    halt.click(do_halt, None, message)
    run.change(tick, run, [state, facts, server])
    timer.tick(tick, run, [state, facts, server], show_progress="hidden")
    refresh.click(lambda r: refresh_choices(trained_runs(ctx), r), run, run)
    load = (lambda: refresh_choices(trained_runs(ctx)), None, run)  # the newest trained run
    return {"run": run, "names": lambda: trained_runs(ctx), "load": load}
