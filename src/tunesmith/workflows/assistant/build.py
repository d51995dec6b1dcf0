"""`tunesmith assistant init / build / serve`: one project file to a served, evaluated assistant."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, DataError, TunesmithError
from tunesmith.workflows.assistant import persona as P
from tunesmith.workflows.assistant.documents import DOCUMENT_SUFFIXES
from tunesmith.workflows.assistant.runner import Context, run_stages
from tunesmith.workflows.assistant.spec import AssistantSpec, load_spec, render_yaml

SPEC_FILE = "assistant.yaml"


def init_project(folder: str | Path, answers: dict, force: bool = False) -> Path:
    """Write FOLDER/assistant.yaml from the answers (a dict shaped like the file); sources are
    checked now, so a wrong path is found before any build."""
    from pydantic import ValidationError

    from tunesmith.config.load import describe_error

    folder = Path(folder)
    path = folder / SPEC_FILE
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; edit it, or pass --force to write it again")
    try:
        spec = AssistantSpec.model_validate(answers)
    except ValidationError as exc:
        lines = [describe_error(err, answers) for err in exc.errors()]
        raise ConfigError("assistant init: " + "; ".join(lines)) from None
    for key, names in (("data.qa", spec.data.qa), ("data.documents", spec.data.documents)):
        for name in names:
            source = Path(name) if Path(name).is_absolute() else folder / name
            if not source.is_file():
                raise DataError(f"{key}: {name}: file not found (paths are relative to {folder})")
            if key == "data.documents" and source.suffix.lower() not in DOCUMENT_SUFFIXES:
                raise DataError(
                    f"{key}: {name}: unsupported document format '{source.suffix}'; documents "
                    f"can be {', '.join(DOCUMENT_SUFFIXES)}"
                )
    folder.mkdir(parents=True, exist_ok=True)
    from tunesmith.runs.folder import atomic_write

    atomic_write(path, render_yaml(spec))
    load_spec(path)  # what was written reads back
    return path


def build(spec_path: str | Path, from_stage: str | None = None, until: str | None = None) -> dict:
    """Run the stages; the dossier is written whatever happens after the first stage."""
    from tunesmith.workflows.assistant.dossier import markdown_table, write_dossier
    from tunesmith.workflows.assistant.evaluate import GateFailed
    from tunesmith.workflows.assistant.stages import STAGES

    spec, root = load_spec(spec_path)
    ctx = Context(spec, root)
    status = "failed"
    try:
        done = run_stages(STAGES, ctx, from_stage, until)
        status = "built" if "export" in ctx.records else f"stopped after {done[-1][0]}"
    except GateFailed:
        status = "gates failed"
        raise
    finally:
        if ctx.records:
            write_dossier(ctx, status)
            console.print(f"dossier: {root / 'dossier.html'} and {root / 'dossier.json'}")
    if "evaluate" in ctx.records:
        console.print(markdown_table(ctx.records["evaluate"]), soft_wrap=True)
    if status == "built":
        console.print(f"serve it: tunesmith assistant serve {spec_path}")
    return {"status": status, "stages": done, "root": str(root)}


# --- serving -----------------------------------------------------------------------------------


def persona_template(template: str, system: str) -> str:
    """The chat template with the persona's system prompt as the default system turn: a request
    without a system message gets it; one with its own keeps that."""
    prompt = json.dumps(system, ensure_ascii=False)
    prefix = (
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {prompt}}}] + messages -%}}"
        "{%- endif -%}"
    )
    return prefix + template


def bake_persona(folder: Path, spec: AssistantSpec) -> dict:
    """Write the persona's default system turn into the exported tokenizer's chat template, and
    check that a conversation without a system turn now renders as one with the persona's."""
    from transformers import AutoTokenizer

    system = P.system_prompt(spec)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = persona_template(tokenizer.chat_template, system)
    tokenizer.save_pretrained(folder)
    reloaded = AutoTokenizer.from_pretrained(folder)
    ask = [{"role": "user", "content": "Hello?"}]
    plain = reloaded.apply_chat_template(ask, tokenize=False, add_generation_prompt=True)
    explicit = reloaded.apply_chat_template(
        [{"role": "system", "content": system}, *ask], tokenize=False, add_generation_prompt=True
    )
    other = reloaded.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *ask],
        tokenize=False,
        add_generation_prompt=True,
    )
    if plain != explicit or system in other:
        raise TunesmithError(
            f"{folder}: the persona's system prompt did not render as the default system turn"
        )
    return {"system_prompt": system, "default_system_turn": True}


def serve_name(spec: AssistantSpec) -> str:
    return re.sub(r"[^a-z0-9]+", "-", spec.persona.name.lower()).strip("-") or "assistant"


def serve_state(spec_path: str | Path, host: str | None = None, port: int | None = None):
    """The server's state for the exported assistant (the persona is in its chat template)."""
    from tunesmith.config.schema import ModelConfig, RunConfig
    from tunesmith.config.serve import ServeConfig
    from tunesmith.serve.server import build_state, require_serve_deps

    spec, root = load_spec(spec_path)
    export = root / "export"
    if not (export / "config.json").is_file():
        raise TunesmithError(
            f"{root}: no exported assistant yet; build it first: "
            f"tunesmith assistant build {spec_path}"
        )
    require_serve_deps()
    serve = ServeConfig(
        host=host or spec.serve.host,
        port=spec.serve.port if port is None else port,
        model_name=serve_name(spec),
    )
    config = RunConfig(model=ModelConfig(name_or_path=str(export)), serve=serve)
    return build_state(config), spec


def serve_assistant(
    spec_path: str | Path, host: str | None = None, port: int | None = None
) -> None:
    from tunesmith.serve.server import run_server

    state, spec = serve_state(spec_path, host, port)
    console.print(
        f"{spec.persona.name} answers as model '{serve_name(spec)}' at "
        f"http://{state.cfg.host}:{state.cfg.port}/v1 (the persona's system prompt is the "
        "default system turn)"
    )
    run_server(state)
