"""The web workshop's page and server: one Blocks per language (the strings of ui/strings.py),
mounted at /en and /zh on one FastAPI app, `/` leading to the chosen language.

Every tab calls tunesmith.workshop (and the library): nothing here trains, evaluates or reads a
run another way. State lives in the workspace's folders, so a reload or a restart loses nothing;
long actions start processes of their own and the page polls their folders with timers.
"""

from __future__ import annotations

import gradio as gr

from tunesmith.ui import strings
from tunesmith.ui.common import Ctx, Engines, chosen
from tunesmith.workshop.workspace import Workspace

TABS = ("runs", "data", "train", "evaluate", "chat", "export", "arena", "assistant")
CSS = "footer {display: none !important}"


def build_page(
    ws: Workspace, lang: str = "en", engines: Engines | None = None, model: str | None = None
):
    from tunesmith.ui import (
        arena_tab,
        assistant_tab,
        chat_tab,
        data_tab,
        evaluate_tab,
        export_tab,
        runs_tab,
        train_tab,
    )

    ctx = Ctx(ws, strings.table(lang), lang)
    engines = engines or Engines(ws.root)
    other = "zh" if lang == "en" else "en"
    with gr.Blocks(title="tunesmith", analytics_enabled=False) as page:
        gr.Markdown(
            f"## tunesmith · {ctx.t('title')}  \n{ctx.t('workspace')}: `{ws.root}` · "
            f"[{strings.LANGUAGE_NAMES[other]}](/{other}/)",
            elem_id="header",
        )
        with gr.Tabs() as tabs:
            with gr.Tab(ctx.t("tab_runs"), id="runs", elem_id="tab-runs"):
                runs = runs_tab.build(ctx)
            with gr.Tab(ctx.t("tab_data"), id="data", elem_id="tab-data"):
                data = data_tab.build(ctx)
            with gr.Tab(ctx.t("tab_train"), id="train", elem_id="tab-train"):
                train_tab.build(ctx, model or "smollm2-135m-instruct")
            with gr.Tab(ctx.t("tab_evaluate"), id="evaluate", elem_id="tab-evaluate"):
                evaluate = evaluate_tab.build(ctx)
            with gr.Tab(ctx.t("tab_chat"), id="chat", elem_id="tab-chat"):
                chat = chat_tab.build(ctx, engines)
            with gr.Tab(ctx.t("tab_export"), id="export", elem_id="tab-export"):
                export = export_tab.build(ctx)
            with gr.Tab(ctx.t("tab_arena"), id="arena", elem_id="tab-arena"):
                arena = arena_tab.build(ctx, engines)
            with gr.Tab(ctx.t("tab_assistant"), id="assistant", elem_id="tab-assistant"):
                assistant = assistant_tab.build(ctx)
        _wire_run_buttons(runs, tabs, evaluate, chat, export)
        # every open or reload reads the workspace again: the lists the components were made
        # with are the workspace as it was when the server started
        for tab in (runs, data, evaluate, chat, export, arena, assistant):
            page.load(*tab["load"], show_progress="hidden")
    return page


def _wire_run_buttons(runs: dict, tabs, evaluate: dict, chat: dict, export: dict) -> None:
    """A run page's evaluate / export / chat buttons open that tab with the run chosen (its
    list read again: the run may be newer than the list)."""
    for button, tab, target in (
        (runs["evaluate"], "evaluate", evaluate),
        (runs["export"], "export", export),
        (runs["chat"], "chat", chat),
    ):
        button.click(
            lambda r, tab=tab, names=target["names"]: (
                gr.Tabs(selected=tab),
                chosen(names(), r),
            ),
            runs["run"],
            [tabs, target["run"]],
        )


def create_app(
    ws: Workspace,
    lang: str = "en",
    auth: tuple[str, str] | None = None,
    max_upload_mb: int = 200,
    model: str | None = None,
):
    """The FastAPI app serving both languages; `/` redirects to `lang`."""
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    engines = Engines(ws.root)  # one set of loaded models for both languages' pages

    @app.get("/")
    def home():
        return RedirectResponse(f"/{lang}/")

    for code in strings.LANGUAGES:
        page = build_page(ws, code, engines, model)
        page.queue(default_concurrency_limit=4)  # a generating chat leaves the other tabs free
        gr.mount_gradio_app(
            app,
            page,
            path=f"/{code}",
            auth=auth,
            allowed_paths=[str(ws.root)],
            max_file_size=f"{max_upload_mb}mb",
            ssr_mode=False,
            footer_links=[],
            css=CSS,
        )
    return app
