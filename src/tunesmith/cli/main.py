"""The `tunesmith` command: parse arguments, call a job, print user errors without tracebacks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.assistant import assistant_app
from tunesmith.cli.data import data_app
from tunesmith.cli.errors import user_errors
from tunesmith.cli.improve import improve_app
from tunesmith.cli.runs import runs_app
from tunesmith.cli.vision import vision_app
from tunesmith.utils.errors import TunesmithError

app = typer.Typer(
    help="tunesmith: fine-tune, evaluate and serve pretrained models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(assistant_app, name="assistant")
app.add_typer(data_app, name="data")
app.add_typer(improve_app, name="improve")
app.add_typer(runs_app, name="runs")
app.add_typer(vision_app, name="vision")


@app.command(context_settings={"allow_extra_args": False})
@user_errors
def train(
    args: Annotated[
        list[str] | None, typer.Argument(help="CONFIG.yaml and/or key=value overrides.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Resume from the last checkpoint: of the run folder given (--resume RUN), or "
            "of the newest run of CONFIG (CONFIG --resume)."
        ),
    ] = False,
    nproc: Annotated[
        int, typer.Option(min=1, help="Processes on this node (torchrun; DDP by default).")
    ] = 1,
    nnodes: Annotated[int, typer.Option(min=1, help="Nodes of a multi-node run.")] = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="This node's rank (0: main).")] = 0,
    master_addr: Annotated[str | None, typer.Option(help="Address of the rank-0 node.")] = None,
    master_port: Annotated[int | None, typer.Option(help="Port on the rank-0 node.")] = None,
):
    """Train a model as described by a YAML config (overrides like train.learning_rate=1e-4)."""
    from tunesmith.config.load import load_config
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train.distributed import Launch, launch

    config_path, overrides = _split_args(args or [])
    if not resume and config_path is None and not overrides:
        raise TunesmithError(
            "give a config file (tunesmith train my_run.yaml) or key=value overrides"
        )
    run_dir = _run_to_resume(config_path, overrides) if resume else None
    if run_dir is not None:  # the run's own resolved config, with this command's overrides
        config_path = None
    if run_dir is not None:
        config = load_config(RunFolder(run_dir).config_path, overrides, saved=True)
    else:
        config = load_config(config_path, overrides)
    options = Launch(nproc, nnodes, node_rank, master_addr, master_port)
    if options.needed:  # this process only starts torchrun; each child trains
        launch(config, config_path, overrides, run_dir, options)
    else:
        run = RunFolder(run_dir) if run_dir else None
        result = _train_or_stop(
            config,
            run or RunFolder.create(config.output, f"{config.train.stage}-{config.method.type}"),
            resume=run is not None,
        )
        if config.eval.after_train:  # evaluate the new run as its eval section says
            from tunesmith.cli.eval import eval_after_train

            eval_after_train(config, result.run.root)


@app.command()
@user_errors
def chat(
    model: Annotated[str | None, typer.Option(help="Base model reference.")] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="Run folder, adapter folder or tuned model folder.")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Answer this one prompt and exit.")] = None,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    compare: Annotated[
        bool, typer.Option(help="Answer with the base and the tuned model side by side.")
    ] = False,
    image: Annotated[
        Path | None,
        typer.Option(help="An image the first question is about (a vision-language model)."),
    ] = None,
):
    """Chat with a model (and adapter) in the terminal, or answer one --prompt."""
    from tunesmith.cli.chat import chat_loop

    chat_loop(model, adapter, prompt, system, max_new_tokens, temperature, compare, image)


@app.command()
@user_errors
def quickstart(
    name: Annotated[str, typer.Option(help="The assistant's new name.")] = "Tessa",
    author: Annotated[str, typer.Option(help="Who built it.")] = "Tunesmith Labs",
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides of the quickstart config.")
    ] = None,
):
    """Teach the embedded SmolLM2 a new identity on CPU and show answers before and after."""
    from tunesmith.workflows.quickstart import run_quickstart

    run_quickstart(name, author, overrides or [])


def _train_or_stop(config, run, resume: bool):
    """run_stage; stopped by SIGTERM or SIGINT (a checkpoint of the last step saved), the resume
    command and exit code 128 + the signal's number: 143 for SIGTERM, 130 for SIGINT (Ctrl-C), as
    a shell reports a process those signals end. A second signal ends the process at once."""
    from rich.markup import escape

    from tunesmith.runs.folder import is_main_process
    from tunesmith.train import run_stage
    from tunesmith.train.callbacks import TrainingInterrupted
    from tunesmith.utils.console import console

    try:
        return run_stage(config, run, resume=resume)
    except TrainingInterrupted as stop:
        if is_main_process():
            console.print(f"[yellow]{escape(str(stop))}", soft_wrap=True)  # ends with the command
        raise typer.Exit(stop.exit_code) from None


def _run_to_resume(path: Path | None, overrides: list[str]) -> Path:
    """`--resume RUN`: that run folder; `CONFIG --resume`: the newest run of that config."""
    from tunesmith.config.load import load_config
    from tunesmith.runs.folder import RunFolder, latest_run

    if path is None:
        raise TunesmithError(
            "--resume: give a run folder (--resume RUN) or a config (CONFIG --resume)"
        )
    if path.is_dir():
        if not RunFolder(path).config_path.is_file():
            raise TunesmithError(f"--resume: '{path}' is not a run folder (no config.yaml)")
        return path
    config = load_config(path, overrides)
    return latest_run(config.output, f"{config.train.stage}-{config.method.type}")


@app.command()
@user_errors
def export(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="CONFIG.yaml and/or RUN_FOLDER, and key=value overrides."),
    ] = None,
):
    """Merge a run's adapter into its base, save, reload and verify it, write a model card."""
    from tunesmith.cli.export import export_command

    export_command(args or [])


@app.command()
@user_errors
def serve(
    args: Annotated[
        list[str] | None, typer.Argument(help="CONFIG.yaml and/or key=value overrides.")
    ] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="Serve this run / adapter folder (name: its folder).")
    ] = None,
    log_dir: Annotated[
        Path | None,
        typer.Option(help="Log requests (PII redacted) and feedback here (serve.log_dir)."),
    ] = None,
):
    """Serve the base model and its adapters with an OpenAI-compatible HTTP API."""
    from tunesmith.cli.serve import serve_command

    serve_command(*_split_args(args or []), adapter, log_dir)


@app.command(name="eval")
@user_errors
def eval_(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="CONFIG.yaml, a RUN_FOLDER to evaluate, and key=value overrides."),
    ] = None,
):
    """Evaluate a model or a run against a baseline (eval section); writes eval.json + report."""
    from tunesmith.cli.eval import eval_command

    eval_command(args or [])


@app.command()
@user_errors
def plan(
    args: Annotated[
        list[str] | None, typer.Argument(help="CONFIG.yaml and/or key=value overrides.")
    ] = None,
    goal: Annotated[str, typer.Option(help="quality | speed | memory")] = "quality",
    no_probe: Annotated[
        bool, typer.Option("--no-probe", help="FLOPs time estimate; no measured steps.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the plan to this JSON file.")
    ] = None,
    hardware: Annotated[
        str | None, typer.Option(help="Plan for other hardware: cpu:<GB> or cuda:<GB>[x<N>].")
    ] = None,
):
    """Estimate memory and time of a training config and advise a method (nothing trains)."""
    from tunesmith.cli.plan import plan_command

    plan_command(*_split_args(args or []), goal, not no_probe, json_out, hardware)


@app.command()
@user_errors
def mcp(
    workspace: Annotated[
        Path, typer.Option(help="Workspace folder: every path the agent gives stays inside it.")
    ] = Path("."),
    runs_dir: Annotated[str, typer.Option(help="Runs folder inside the workspace.")] = "runs",
):
    """Serve the workshop's actions to a coding agent over MCP (stdio)."""
    from tunesmith.cli.agent import serve_mcp

    serve_mcp(workspace, runs_dir)


@app.command()
@user_errors
def ui(
    workspace: Annotated[
        Path, typer.Option(help="Workspace folder: every path the page accepts stays inside it.")
    ] = Path("."),
    host: Annotated[str, typer.Option(help="Address to bind; beyond localhost needs --auth.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port of the page.")] = 7860,
    lang: Annotated[str, typer.Option(help="en | zh (the page links to the other).")] = "en",
    auth: Annotated[str | None, typer.Option(help="user:pass the page asks for.")] = None,
    runs_dir: Annotated[str, typer.Option(help="Runs folder inside the workspace.")] = "runs",
    max_upload_mb: Annotated[int, typer.Option(min=1, help="Largest upload in MB.")] = 200,
):
    """The web workshop: runs, data, train, evaluate, chat, export/serve and arena tabs."""
    from tunesmith.cli.ui import serve_ui

    serve_ui(workspace, host, port, lang, auth, runs_dir, max_upload_mb)


def _split_args(args: list[str]) -> tuple[Path | None, list[str]]:
    configs = [a for a in args if "=" not in a]
    if len(configs) > 1:
        raise TunesmithError(f"expected one config file, got {configs}; overrides need key=value")
    return (Path(configs[0]) if configs else None), [a for a in args if "=" in a]


if __name__ == "__main__":  # torchrun starts each process with `-m tunesmith.cli.main`
    app()
