"""The Arena tab: blind side-by-side rating (evaluation/arena.py). Two models answer one prompt
(from a data file or typed); the page shows them as 1 and 2 in a random order, and which is
which stays on the server (session state) until the vote is stored in the run's folder."""

from __future__ import annotations

import random

import gradio as gr

from tunesmith.evaluation import arena
from tunesmith.models.engine import GenerationParams
from tunesmith.ui.common import Ctx, Engines, data_files, guarded, refresh_choices, trained_runs

BASE = "base"


def reference(run: str) -> str:
    return BASE if run == BASE else f"run:{run}"


def answer(ctx: Ctx, engines: Engines, run: str, opponent: str, prompt: str, tokens: int) -> dict:
    """Both models' answers to one prompt, by reference (greedy: a rating compares models, not
    sampling luck)."""
    params = GenerationParams(max_new_tokens=tokens)
    conversation = [{"role": "user", "content": prompt}]
    out = {}
    for name in (run, opponent):
        if name == BASE:
            engine = engines.get(ctx.ws.run_dir(run), base=True)
        else:
            engine = engines.get(ctx.ws.run_dir(name))
        out[reference(name)] = engine.generate([conversation], params)[0].text
    return out


def stats_text(ctx: Ctx, run: str, opponent: str, margin: float) -> str:
    if not run or not opponent:
        return ""
    votes = arena.read_votes(ctx.ws.run_dir(run))
    stats = arena.arena_stats(votes, reference(run), reference(opponent), float(margin))
    rate = "-" if stats["win_rate"] is None else f"{stats['win_rate']:.0%}"
    return ctx.t(
        "arena_stats",
        run=run,
        opponent=opponent,
        rate=rate,
        low=f"{stats['ci_low']:.0%}",
        high=f"{stats['ci_high']:.0%}",
        wins=stats["wins"],
        losses=stats["losses"],
        ties=stats["ties"],
        needed=stats["votes_needed"],
        margin=f"{float(margin):.0%}",
    )


def build(ctx: Ctx, engines: Engines) -> dict:
    names = trained_runs(ctx)
    files = data_files(ctx)
    with gr.Row():
        run = gr.Dropdown(
            names, value=names[0] if names else None, label=ctx.t("run"), elem_id="arena-run"
        )
        opponent = gr.Dropdown(
            [BASE, *names], value=BASE, label=ctx.t("opponent"), elem_id="arena-opponent"
        )
        refresh = gr.Button(ctx.t("refresh"), scale=0)
    with gr.Row():
        prompts = gr.Dropdown(
            files, value=None, label=ctx.t("prompts_file"), allow_custom_value=True
        )
        own = gr.Textbox(label=ctx.t("own_prompt"), max_lines=2, elem_id="arena-own")
        tokens = gr.Slider(8, 512, value=64, step=8, label="max_new_tokens")
    next_ = gr.Button(ctx.t("next_pair"), variant="primary", elem_id="arena-next")
    prompt_shown = gr.Markdown(elem_id="arena-prompt")
    with gr.Row():
        left = gr.Textbox(
            label=ctx.t("answer", n=1), lines=6, interactive=False, elem_id="arena-left"
        )
        right = gr.Textbox(
            label=ctx.t("answer", n=2), lines=6, interactive=False, elem_id="arena-right"
        )
    reason = gr.Textbox(label=ctx.t("reason"), max_lines=2, elem_id="arena-reason")
    with gr.Row():
        one = gr.Button(ctx.t("left_better"), elem_id="arena-vote-1")
        tie = gr.Button(ctx.t("tie"), elem_id="arena-vote-tie")
        two = gr.Button(ctx.t("right_better"), elem_id="arena-vote-2")
    message = gr.Markdown(elem_id="arena-message")
    margin = gr.Slider(0.02, 0.3, value=0.1, step=0.01, label=ctx.t("margin"))
    stats = gr.Markdown(elem_id="arena-stats")
    export = gr.Button(ctx.t("export_pairs"), elem_id="arena-export")
    pairs = gr.File(label=ctx.t("downloads"), interactive=False)
    pending = gr.State(None)  # {"prompt", "order": [ref shown as 1, ref shown as 2], "answers"}
    pool = gr.State([])  # the prompts file's prompts not yet shown

    @guarded(5)
    def do_next(r, o, file, typed, n, remaining):
        if not r:
            raise ValueError(ctx.t("choose_run"))
        if o == r:
            raise ValueError(ctx.t("same_models"))
        if typed.strip():
            prompt = typed.strip()
        else:
            remaining = list(remaining) or (
                arena.prompts_from_file(ctx.ws.resolve(file, "prompts file")) if file else []
            )
            if not remaining:
                raise ValueError(ctx.t("give_prompt"))
            prompt = remaining.pop(random.randrange(len(remaining)))
        answers = answer(ctx, engines, r, o, prompt, int(n))
        order = random.sample(list(answers), 2)  # which side each model is shown on: blind
        shown = {"prompt": prompt, "order": order, "answers": answers}
        return (
            "",
            f"**{ctx.t('prompt')}**: {prompt}",
            answers[order[0]],
            answers[order[1]],
            (shown, remaining),
        )

    def split(result):
        if isinstance(result, str):
            return result, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        message_, shown_prompt, a, b, state = result
        if state is gr.skip() or not isinstance(state, tuple):
            return message_, shown_prompt, a, b, gr.skip(), gr.skip()
        return message_, shown_prompt, a, b, state[0], state[1]

    def vote(side):
        @guarded(7)
        def run_vote(r, o, shown, why, m):
            if not shown:
                raise ValueError(ctx.t("no_pair"))
            winner = arena.TIE if side is None else shown["order"][side]
            arena.record_vote(ctx.ws.run_dir(r), shown["prompt"], shown["answers"], winner, why)
            # the pair is used up: cleared, so the next one (often the same prompt, and greedy
            # answers) is seen to arrive and a pair is never voted on twice
            return ctx.t("voted"), None, "", stats_text(ctx, r, o, m), "", "", ""

        return run_vote

    @guarded(2)
    def do_export(r):
        out = ctx.ws.run_dir(r) / "arena" / "pairs.jsonl"
        made = arena.export_pairs(arena.read_votes(ctx.ws.run_dir(r)), out)
        return ctx.t("exported_pairs", n=made["pairs"], path=ctx.ws.relative(out)), made["output"]

    next_.click(
        lambda *a: split(do_next(*a)),
        [run, opponent, prompts, own, tokens, pool],
        [message, prompt_shown, left, right, pending, pool],
    )
    for button, side in ((one, 0), (two, 1), (tie, None)):
        button.click(
            vote(side),
            [run, opponent, pending, reason, margin],
            [message, pending, reason, stats, prompt_shown, left, right],
        )
    for control in (run, opponent, margin):
        control.change(
            guarded(1)(lambda r, o, m: stats_text(ctx, r, o, m)), [run, opponent, margin], stats
        )
    export.click(do_export, run, [message, pairs])

    def reload(r, o):
        names_ = trained_runs(ctx)
        return refresh_choices(names_, r), refresh_choices([BASE, *names_], o)

    def opened(o, file):  # a page load: the newest trained run; files may have come since
        names_ = trained_runs(ctx)
        files_ = data_files(ctx)
        return (
            refresh_choices(names_),
            refresh_choices([BASE, *names_], o),
            gr.update(choices=files_, value=file),
        )

    refresh.click(reload, [run, opponent], [run, opponent])
    return {"run": run, "load": (opened, [opponent, prompts], [run, opponent, prompts])}
