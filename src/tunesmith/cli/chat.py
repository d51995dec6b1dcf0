"""Terminal chat: one answer with --prompt, or a conversation until /exit; with --compare the
base model answers beside the tuned one (each keeps its own history)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from tunesmith.config.schema import ModelConfig
from tunesmith.models.generate import generate_replies
from tunesmith.runs.trained import load_for_inference, open_run
from tunesmith.utils.console import console
from tunesmith.utils.errors import ModelError, TunesmithError

HELP = "commands: /reset clears the conversation, /exit quits"

Answer = Callable[[list[dict]], str]


def chat_loop(
    model_ref: str | None,
    adapter: Path | None,
    prompt: str | None,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    compare: bool = False,
    image: Path | None = None,
) -> None:
    model_cfg = ModelConfig(name_or_path=model_ref) if model_ref else None
    if model_cfg is None and adapter is None:
        model_cfg = ModelConfig()  # the embedded default
    if compare and adapter is None:
        raise TunesmithError("--compare needs --adapter (a run, adapter or tuned model folder)")
    model, tokenizer = load_for_inference(adapter, model_cfg)
    first = with_image(image, tokenizer)  # the first user turn's content, from its text
    tuned = answerer(model, tokenizer, max_new_tokens, temperature)
    answerers = {"assistant": tuned}
    if compare:
        base = base_model(model, model_cfg, adapter)
        off = model.disable_adapter if base is model else contextlib.nullcontext
        # the tuned tokenizer for both: the same template, so only the weights differ
        answerers = {"base": answerer(base, tokenizer, max_new_tokens, temperature, off)}
        answerers["tuned"] = tuned
    start = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        conversation = [*start, {"role": "user", "content": first(prompt)}]
        show({name: answer(conversation) for name, answer in answerers.items()})
        return
    converse(answerers, start, first)


def with_image(image: Path | None, tokenizer) -> Callable[[str], object]:
    """The first question's content: its text, after the image with --image (checked here, so a
    wrong path or a text-only model is one sentence before any question is asked)."""
    if image is None:
        return lambda text: text
    from tunesmith.models.vlm import is_processor

    if not is_processor(tokenizer):
        raise TunesmithError("--image: this model reads text only; give a vision-language model")
    if not Path(image).is_file():
        raise TunesmithError(f"--image: no such file '{image}'")
    try:
        from PIL import Image

        with Image.open(image) as opened:
            opened.verify()
    except Exception as exc:
        raise TunesmithError(f"--image: '{image}' is not a readable image ({exc})") from None
    return lambda text: [{"type": "image", "image": str(image)}, {"type": "text", "text": text}]


def answerer(model, tokenizer, max_new_tokens: int, temperature: float, context=None) -> Answer:
    def answer(history: list[dict]) -> str:
        with (context or contextlib.nullcontext)():
            replies = generate_replies(model, tokenizer, [history], max_new_tokens, temperature)
        return replies[0].text

    return answer


def base_model(tuned, model_cfg: ModelConfig | None, adapter: Path):
    """The model before tuning: the PEFT model itself (adapter switched off per answer) where
    switching it off leaves the base, else the base weights loaded beside the tuned model."""
    run = open_run(adapter, model_cfg)
    if run.method.shares_base and hasattr(tuned, "disable_adapter"):
        return tuned
    if run.model_cfg is None:
        raise ModelError("--compare: no base model known for this tuned model; pass --model")
    return run.load_untrained()


def show(answers: dict[str, str]) -> None:
    if len(answers) == 1:
        console.print(next(iter(answers.values())), markup=False)
        return
    table = Table(show_lines=True, expand=True)
    for name in answers:
        table.add_column(name, ratio=1)
    table.add_row(*answers.values())
    console.print(table)


def converse(
    answerers: dict[str, Answer], start: list[dict], first: Callable[[str], object] = str
) -> None:
    console.print(HELP)
    histories = {name: list(start) for name in answerers}
    while True:
        try:
            text = console.input("[bold]you> [/bold]").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if text == "/exit":
            break
        if text == "/reset":
            histories = {name: list(start) for name in answerers}
            continue
        if not text:
            continue
        answers = {}
        asked = any(m["role"] == "user" for m in next(iter(histories.values())))
        content = text if asked else first(text)  # the image goes with the first question
        for name, answer in answerers.items():
            histories[name].append({"role": "user", "content": content})
            answers[name] = answer(histories[name])
            histories[name].append({"role": "assistant", "content": answers[name]})
        if len(answers) == 1:
            console.print("[bold]assistant>[/bold] ", end="")
        show(answers)
