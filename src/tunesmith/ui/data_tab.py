"""The Data tab: choose or upload a workspace file (or a dataset_info.json entry), its inspect
report, clean (kept vs rejected with reasons), convert, download; and human review
(data/review.py) one record at a time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gradio as gr

from tunesmith.data.readers import read_records
from tunesmith.data.review import read_review_file, write_review_file
from tunesmith.ui.common import Ctx, data_files, embedded, guarded, refresh_choices
from tunesmith.utils.errors import TunesmithError
from tunesmith.workshop import actions

UPLOADS = "uploads"
REVIEWS = ".tunesmith/review"
PREVIEW = 20


def upload(ctx: Ctx, temp_path: str) -> str:
    """An uploaded file copied into the workspace's uploads/ (size checked again here: the
    server refuses larger uploads before they land, this catches a changed limit)."""
    source = Path(temp_path)
    if source.stat().st_size > ctx.max_upload_mb * 2**20:
        raise TunesmithError(
            f"'{source.name}' is larger than the {ctx.max_upload_mb} MB upload limit"
        )
    target = ctx.ws.resolve(f"{UPLOADS}/{source.name}", "upload")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return ctx.ws.relative(target)


def preview(path: Path, limit: int = PREVIEW) -> list[list]:
    rows = []
    for raw in read_records(path):
        rows.append([raw.line, json.dumps(raw.data, ensure_ascii=False)[:300]])
        if len(rows) >= limit:
            break
    return rows


def rejects_preview(path: Path, limit: int = PREVIEW) -> list[list]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[:limit]:
        item = json.loads(line)
        record = json.dumps(item.get("record", item), ensure_ascii=False)[:200]
        rows.append([item.get("line"), item.get("reason") or item.get("step"), record])
    return rows


def review_view(ctx: Ctx, review: str, index: int):
    """(position, stratum, record JSON, decision line, counts) of one review line."""
    entries = [e for _, e in read_review_file(ctx.ws.resolve(review, "review file"))]
    index = max(0, min(index, len(entries) - 1))
    entry = entries[index]
    shown = entry.get("edited") or entry["record"]
    decided = entry.get("decision") or ctx.t("undecided")
    counts = actions.review_counts(entries)
    return (
        index,
        f"{index + 1} / {len(entries)} · {json.dumps(entry['stratum'], ensure_ascii=False)}",
        json.dumps(shown, ensure_ascii=False, indent=1),
        f"{ctx.t('decision')}: **{decided}** {entry.get('reason') or ''}",
        ctx.t("review_counts", **counts),
    )


def build(ctx: Ctx) -> dict:
    files = data_files(ctx)
    with gr.Row():
        chosen = gr.Dropdown(
            files,
            value=files[0] if files else None,
            allow_custom_value=True,
            label=ctx.t("data_file"),
            scale=3,
            elem_id="data-file",
        )
        refresh = gr.Button(ctx.t("refresh"), scale=0)
        uploaded = gr.File(
            label=ctx.t("upload"),
            scale=1,
            file_types=[".jsonl", ".json", ".csv", ".parquet", ".txt"],
        )
    message = gr.Markdown(elem_id="data-message")
    with gr.Tabs():
        with gr.Tab(ctx.t("inspect")):
            inspect = gr.Button(ctx.t("inspect"), variant="primary", elem_id="data-inspect")
            headline = gr.Markdown(elem_id="data-headline")
            report = gr.HTML()
        with gr.Tab(ctx.t("clean")):
            with gr.Row():
                clean_out = gr.Textbox(
                    "clean/cleaned.jsonl", label=ctx.t("output_file"), max_lines=1
                )
                clean = gr.Button(ctx.t("clean"), variant="primary", elem_id="data-clean")
            counts = gr.Markdown()
            kept = gr.Dataframe(headers=["line", "record"], label=ctx.t("kept"))
            rejected = gr.Dataframe(headers=["line", "reason", "record"], label=ctx.t("rejected"))
        with gr.Tab(ctx.t("convert")), gr.Row():
            to = gr.Dropdown(
                ["alpaca", "sharegpt", "openai"], value="sharegpt", label=ctx.t("to_format")
            )
            convert_out = gr.Textbox(
                "converted/data.jsonl", label=ctx.t("output_file"), max_lines=1
            )
            convert = gr.Button(ctx.t("convert"), variant="primary")
        with gr.Tab(ctx.t("review")):
            with gr.Row():
                fraction = gr.Slider(0.01, 1, value=0.1, step=0.01, label=ctx.t("fraction"))
                strata = gr.Textbox("category,source,length", label=ctx.t("strata"), max_lines=1)
                sample = gr.Button(ctx.t("sample"), variant="primary", elem_id="review-sample")
            review_file = gr.Textbox(
                label=ctx.t("review_file"), interactive=False, elem_id="review-file"
            )
            position = gr.State(0)
            where = gr.Markdown(elem_id="review-where")
            record = gr.Code(
                language="json", interactive=True, label=ctx.t("record"), elem_id="review-record"
            )
            decision = gr.Markdown(elem_id="review-decision")
            reason = gr.Textbox(label=ctx.t("reason"), max_lines=1, elem_id="review-reason")
            with gr.Row():
                back = gr.Button("◀")
                accept = gr.Button(ctx.t("accept"), elem_id="review-accept")
                edit = gr.Button(ctx.t("save_edit"), elem_id="review-edit")
                reject = gr.Button(ctx.t("reject"), elem_id="review-reject")
                forward = gr.Button("▶")
            tally = gr.Markdown(elem_id="review-counts")
            with gr.Row():
                reviewed_out = gr.Textbox(
                    "reviewed/data.jsonl", label=ctx.t("output_file"), max_lines=1
                )
                apply = gr.Button(ctx.t("apply_review"), variant="primary", elem_id="review-apply")
    downloads = gr.File(label=ctx.t("downloads"), file_count="multiple", interactive=False)

    @guarded(2)
    def do_upload(temp):
        relative = upload(ctx, temp)
        return ctx.t("uploaded", path=relative), refresh_choices(data_files(ctx), relative)

    @guarded(3)
    def do_inspect(file):
        result = actions.inspect(ctx.ws, [file])
        score = result.get("quality_score")
        line = ctx.t("inspected", read=result["records"]["read"], score=score)
        tips = "".join(f"\n- {tip}" for tip in result["recommendations"][:8])
        return "", line + tips, embedded(ctx.ws.resolve(result["html"]))

    @guarded(5)
    def do_clean(file, out):
        result = actions.clean(ctx.ws, [file], out)
        paths = [ctx.ws.resolve(result[k]) for k in ("output", "rejects_path") if result.get(k)]
        line = ctx.t(
            "cleaned", read=result["read"], kept=result["kept"], rejected=result["rejected"]
        )
        rejects = paths[1] if len(paths) > 1 else None
        return (
            "",
            line,
            preview(paths[0]),
            rejects_preview(rejects) if rejects and rejects.is_file() else [],
            [str(p) for p in paths],
        )

    @guarded(2)
    def do_convert(file, fmt, out):
        result = actions.convert(ctx.ws, file, out, fmt)
        return ctx.t("converted", written=result["written"], to=fmt, path=result["output"]), [
            str(ctx.ws.resolve(result["output"]))
        ]

    @guarded(7)
    def do_sample(file, share, names):
        source = one_file(ctx, file)
        out = ctx.ws.resolve(f"{REVIEWS}/{source.stem}.review.jsonl", "review file")
        out.parent.mkdir(parents=True, exist_ok=True)
        if (
            out.exists()
        ):  # a new sample replaces the old one (its decisions were applied or dropped)
            out.unlink()
        strata_ = [s.strip() for s in names.split(",") if s.strip()]
        made = write_review_file(source, out, float(share), strata_)
        relative = ctx.ws.relative(out)
        return (
            ctx.t("sampled", n=made["sampled"], strata=made["strata"]),
            relative,
            *review_view(ctx, relative, 0),
        )

    def decide(kind):
        @guarded(6)
        def run(review, index, why, text):
            edited = json.loads(text) if kind == "edit" else None
            actions.review_decide(ctx.ws, review, int(index), kind, why, edited)
            return ("", *review_view(ctx, review, int(index) + 1))

        return run

    def move(step):
        @guarded(6)
        def run(review, index):
            return ("", *review_view(ctx, review, int(index) + step))

        return run

    @guarded(2)
    def do_apply(file, review, out):
        from tunesmith.data.review import apply_review

        result = apply_review(
            one_file(ctx, file), ctx.ws.resolve(review), ctx.ws.resolve(out, "out")
        )
        line = ctx.t(
            "applied",
            **{k: result[k] for k in ("kept", "rejected", "accepted", "modified", "undecided")},
        )
        return line, [result["output"], result["rejects_path"]]

    uploaded.upload(do_upload, uploaded, [message, chosen])
    refresh.click(lambda f: refresh_choices(data_files(ctx), f), chosen, chosen)
    chosen.change(_checked(ctx), chosen, message)
    inspect.click(do_inspect, chosen, [message, headline, report])
    clean.click(do_clean, [chosen, clean_out], [message, counts, kept, rejected, downloads])
    convert.click(do_convert, [chosen, to, convert_out], [message, downloads])
    view = [position, where, record, decision, tally]
    sample.click(do_sample, [chosen, fraction, strata], [message, review_file, *view])
    for button, kind in ((accept, "accept"), (edit, "edit"), (reject, "reject")):
        button.click(decide(kind), [review_file, position, reason, record], [message, *view])
    back.click(move(-1), [review_file, position], [message, *view])
    forward.click(move(1), [review_file, position], [message, *view])
    apply.click(do_apply, [chosen, review_file, reviewed_out], [message, downloads])
    # a page load reads the workspace's files again (uploads since the server started)
    return {"load": (lambda f: refresh_choices(data_files(ctx), f), chosen, chosen)}


def one_file(ctx: Ctx, chosen: str) -> Path:
    """The one data file a review reads: the file chosen, or a dataset entry's only file."""
    paths, _, _ = actions.data_source(ctx.ws, [chosen])
    if len(paths) > 1:
        raise TunesmithError(f"'{chosen}' has {len(paths)} files; review one file at a time")
    return Path(paths[0])


def _checked(ctx: Ctx):
    """A typed path is checked at once: a path leaving the workspace is refused in the page,
    a dataset entry (REGISTRY::NAME) is looked up in its registry."""

    @guarded(1)
    def check(path):
        if path and actions.ENTRY in path:
            actions.data_source(ctx.ws, [path])
        elif path:
            resolved = ctx.ws.resolve(path, "data file")
            if not resolved.is_file():
                return f"⚠ {ctx.t('not_found', path=path)}"
        return ""

    return check
