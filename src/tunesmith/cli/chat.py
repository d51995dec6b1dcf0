"""Terminal chat: one answer with --prompt, or a conversation until /exit."""

from __future__ import annotations

from pathlib import Path

from tunesmith.config.schema import ModelConfig
from tunesmith.models.generate import generate_replies
from tunesmith.models.tuned import load_for_inference
from tunesmith.utils.console import console

HELP = "commands: /reset clears the conversation, /exit quits"


def chat_loop(
    model_ref: str | None,
    adapter: Path | None,
    prompt: str | None,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
) -> None:
    model_cfg = ModelConfig(name_or_path=model_ref) if model_ref else None
    if model_cfg is None and adapter is None:
        model_cfg = ModelConfig()  # the embedded default
    model, tokenizer = load_for_inference(model_cfg, adapter)
    start = [{"role": "system", "content": system}] if system else []

    def answer(history: list[dict]) -> str:
        return generate_replies(model, tokenizer, [history], max_new_tokens, temperature)[0].text

    if prompt is not None:
        console.print(answer([*start, {"role": "user", "content": prompt}]), markup=False)
        return
    console.print(HELP)
    history = list(start)
    while True:
        try:
            text = console.input("[bold]you> [/bold]").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if text == "/exit":
            break
        if text == "/reset":
            history = list(start)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        reply = answer(history)
        history.append({"role": "assistant", "content": reply})
        console.print("[bold]assistant>[/bold] ", end="")
        console.print(reply, markup=False)
