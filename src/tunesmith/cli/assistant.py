"""`tunesmith assistant init | build | serve`: the customized assistant, end to end."""

from __future__ import annotations

import shutil
import sys
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.errors import user_errors
from tunesmith.utils.console import console
from tunesmith.utils.errors import TunesmithError

assistant_app = typer.Typer(
    help="A customized assistant from your documents, FAQs and persona: init, build, serve.",
    no_args_is_help=True,
)
DEMO = files("tunesmith.workflows.assistant") / "demo"
_DEMO_ANSWERS = {
    "domain": "parcel delivery, returns and store hours of Larkspur Parcel & Post",
    "persona": {
        "name": "Wren",
        "organization": "Larkspur Parcel & Post",
        "tone": "friendly and concise",
        "language": "en",
        "refuse": ["legal advice", "medical advice"],
    },
    "data": {
        "qa": ["faq.jsonl"],
        "documents": ["docs/delivery.md", "docs/returns.html", "docs/store.txt"],
        "questions_per_chunk": 1,
    },
    "budget": {"minutes": 20},
    "train": {
        "overrides": [
            "train.learning_rate=1e-3",
            "method.r=16",
            "method.alpha=32",
            "train.epochs=3",
        ]
    },
    "evaluate": {"max_new_tokens": 64, "safety_probes": 10},
}


@assistant_app.command()
@user_errors
def init(
    folder: Annotated[
        Path, typer.Argument(help="Project folder (assistant.yaml goes here).")
    ] = Path("."),
    domain: Annotated[str | None, typer.Option(help="What the assistant is for.")] = None,
    name: Annotated[str | None, typer.Option(help="The persona's name.")] = None,
    organization: Annotated[str | None, typer.Option(help="Who it speaks for.")] = None,
    tone: Annotated[str, typer.Option(help="How it answers.")] = "friendly and concise",
    language: Annotated[str, typer.Option(help="en | zh: the language of its answers.")] = "en",
    refuse: Annotated[
        list[str] | None, typer.Option(help="A topic it must decline (repeat).")
    ] = None,
    refusal: Annotated[
        str | None, typer.Option(help="Its refusal sentence ({topic} is filled).")
    ] = None,
    qa: Annotated[
        list[str] | None, typer.Option(help="A Q&A file, any supported format (repeat).")
    ] = None,
    document: Annotated[
        list[str] | None, typer.Option(help="A .txt/.md/.pdf/.docx/.html document (repeat).")
    ] = None,
    dataset_info: Annotated[
        str | None, typer.Option(help="A dataset_info.json (with --dataset).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="The entry of --dataset-info to read.")
    ] = None,
    teacher: Annotated[
        str, typer.Option(help="base, local:<model> or an OpenAI-compatible URL.")
    ] = "base",
    model: Annotated[str, typer.Option(help="Base model; auto: the planner's pick.")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    memory_gb: Annotated[float | None, typer.Option(help="Memory budget in GB.")] = None,
    minutes: Annotated[float, typer.Option(help="Training time budget in minutes.")] = 30.0,
    demo: Annotated[
        bool, typer.Option(help="Copy the worked demo (a parcel service FAQ) here.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing assistant.yaml.")] = False,
):
    """Write assistant.yaml (every choice explained in a comment); asks for what is missing."""
    from tunesmith.workflows.assistant.build import init_project

    if demo:
        _copy_demo(folder)
        answers = _DEMO_ANSWERS
    else:
        if bool(dataset_info) != bool(dataset):
            raise TunesmithError("--dataset-info and --dataset go together: the file and its entry")
        answers = {
            "domain": domain or _ask("domain", "What is the assistant for (its domain)?"),
            "model": model,
            "persona": {
                "name": name or _ask("name", "The assistant's name?"),
                "organization": organization,
                "tone": tone,
                "language": language,
                "refuse": list(refuse or []),
                "refusal": refusal,
            },
            "data": {
                "qa": list(qa or [])
                or _ask_list("qa", "Q&A files (comma-separated, empty: none)?"),
                "documents": list(document or [])
                or _ask_list("document", "Documents (comma-separated, empty: none)?"),
                "dataset": {"registry": dataset_info, "name": dataset} if dataset else None,
                "teacher": teacher,
            },
            "budget": {"device": device, "memory_gb": memory_gb, "minutes": minutes},
        }
    path = init_project(folder, answers, force)
    console.print(f"wrote {path}; next: tunesmith assistant build {path}")


def _ask(option: str, question: str) -> str:
    if not sys.stdin.isatty():
        raise TunesmithError(f"--{option}: required (no terminal to ask on)")
    return typer.prompt(question)


def _ask_list(option: str, question: str) -> list[str]:
    if not sys.stdin.isatty():
        return []
    answer = typer.prompt(question, default="", show_default=False)
    return [a.strip() for a in answer.split(",") if a.strip()]


def _copy_demo(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for item in DEMO.iterdir():
        target = folder / item.name
        if item.is_dir():
            shutil.copytree(Path(str(item)), target, dirs_exist_ok=True)
        else:
            target.write_bytes(item.read_bytes())


@assistant_app.command()
@user_errors
def build(
    spec: Annotated[Path, typer.Argument(help="The project's assistant.yaml.")] = Path(
        "assistant.yaml"
    ),
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Redo from this stage: requirements, model, strategy, data, train, evaluate, "
            "gates, export.",
        ),
    ] = None,
    until: Annotated[str | None, typer.Option(help="Stop after this stage.")] = None,
):
    """Build the assistant: each stage is skipped when its inputs are unchanged."""
    from tunesmith.workflows.assistant.build import build as run_build

    run_build(spec, from_, until)


@assistant_app.command()
@user_errors
def serve(
    spec: Annotated[Path, typer.Argument(help="The project's assistant.yaml.")] = Path(
        "assistant.yaml"
    ),
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
):
    """Serve the built assistant (OpenAI-compatible) with the persona's system prompt."""
    from tunesmith.workflows.assistant.build import serve_assistant

    serve_assistant(spec, host, port)
