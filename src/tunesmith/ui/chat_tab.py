"""The Chat tab: a run's base model and the tuned model side by side, streaming, with
generation settings. The models load in this process (runs/inference.py, runs/trained.py)."""

from __future__ import annotations

import queue
import threading

import gradio as gr

from tunesmith.models.engine import GenerationParams
from tunesmith.ui.common import Ctx, Engines, refresh_choices, run_picker, sentence, trained_runs


def stream_both(engines: dict, conversations: dict, params: GenerationParams):
    """(side, delta) as either model produces text, until both are done; side "error" carries
    a sentence."""
    deltas: queue.Queue = queue.Queue()

    def work(side: str) -> None:
        try:
            for delta in engines[side].stream(conversations[side], params):
                deltas.put((side, delta))
        except Exception as exc:
            deltas.put(("error", sentence(exc)))
        finally:
            deltas.put((side, None))

    for side in engines:
        threading.Thread(target=work, args=(side,), daemon=True).start()
    open_sides = set(engines)
    while open_sides:
        side, delta = deltas.get()
        if delta is None and side in open_sides:
            open_sides.discard(side)
        elif delta is not None:
            yield side, delta


def build(ctx: Ctx, engines: Engines) -> dict:
    run, refresh = run_picker(ctx, trained_runs(ctx), "chat-run")
    with gr.Row():
        max_tokens = gr.Slider(1, 1024, value=64, step=1, label="max_new_tokens")
        temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature")
        top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top_p")
    system = gr.Textbox(label=ctx.t("system"), max_lines=2)
    with gr.Row():
        base = gr.Chatbot(label=ctx.t("base_model"), elem_id="chat-base", height=320)
        tuned = gr.Chatbot(label=ctx.t("tuned_model"), elem_id="chat-tuned", height=320)
    with gr.Row():
        prompt = gr.Textbox(
            show_label=False, placeholder=ctx.t("say"), scale=4, elem_id="chat-input"
        )
        send = gr.Button(ctx.t("send"), variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button(ctx.t("clear"), scale=0)
    message = gr.Markdown(elem_id="chat-message")

    def respond(run_name, text, sys_text, left, right, n, temp, p):
        if not run_name or not text.strip():
            yield left, right, ctx.t("choose_run_and_prompt"), text
            return
        try:
            root = ctx.ws.run_dir(run_name)
            loaded = {"base": engines.get(root, base=True), "tuned": engines.get(root)}
            params = GenerationParams(
                max_new_tokens=int(n), temperature=float(temp), top_p=float(p)
            )
        except Exception as exc:
            yield left, right, f"⚠ {sentence(exc)}", text
            return
        start = [{"role": "system", "content": sys_text}] if sys_text.strip() else []
        histories = {"base": list(left or []), "tuned": list(right or [])}
        conversations = {
            s: [*start, *_plain(h), {"role": "user", "content": text}] for s, h in histories.items()
        }
        for side in histories:
            histories[side] += [
                {"role": "user", "content": text},
                {"role": "assistant", "content": ""},
            ]
        yield histories["base"], histories["tuned"], "", ""
        for side, delta in stream_both(loaded, conversations, params):
            if side == "error":
                yield histories["base"], histories["tuned"], f"⚠ {delta}", ""
                continue
            histories[side][-1]["content"] += delta
            yield histories["base"], histories["tuned"], "", ""

    inputs = [run, prompt, system, base, tuned, max_tokens, temperature, top_p]
    send.click(respond, inputs, [base, tuned, message, prompt])
    prompt.submit(respond, inputs, [base, tuned, message, prompt])
    clear.click(lambda: ([], []), None, [base, tuned])
    refresh.click(lambda r: refresh_choices(trained_runs(ctx), r), run, run)
    load = (lambda: refresh_choices(trained_runs(ctx)), None, run)  # the newest trained run
    return {"run": run, "names": lambda: trained_runs(ctx), "load": load}


def _plain(history: list) -> list[dict]:
    """Chatbot messages as chat turns (role and text only)."""
    out = []
    for message in history:
        content = message["content"] if isinstance(message, dict) else message.content
        role = message["role"] if isinstance(message, dict) else message.role
        if isinstance(content, list):  # Gradio 6 may hand text back as content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append({"role": role, "content": content})
    return out
