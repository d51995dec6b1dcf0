"""Build the server from a run config and run it with uvicorn."""

from __future__ import annotations

import os
from pathlib import Path

from tunesmith.config.schema import RunConfig
from tunesmith.models.engine import TransformersEngine
from tunesmith.models.load import load_model_and_tokenizer
from tunesmith.runs.inference import create_engine
from tunesmith.runs.trained import open_run
from tunesmith.serve.app import ServerState, create_app
from tunesmith.serve.batcher import Batcher
from tunesmith.serve.registry import ModelRegistry
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, TunesmithError

API_KEY_ENV = "TUNESMITH_SERVE_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def require_serve_deps() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise TunesmithError(
            "serving needs fastapi and uvicorn: pip install 'tunesmith[serve]'"
        ) from None


def build_state(config: RunConfig, adapter: str | Path | None = None) -> ServerState:
    """Load the base model (and adapters when preloading) and wire registry, batcher, state."""
    cfg = config.serve
    base_name = cfg.model_name or config.model.name_or_path
    if cfg.engine == "vllm":
        if cfg.adapters_dir:
            raise ConfigError(
                "serve.adapters_dir: several adapters are switched with the transformers engine; "
                "serve one adapter with vllm (--adapter), or merge it first (tunesmith export)"
            )
        engine = create_engine(config.model, adapter, kind="vllm", batch_size=cfg.batch_size)
        registry = ModelRegistry(engine, base_name)
    else:
        engine, explicit, base_cfg = _transformers_engine(config, adapter)
        registry = ModelRegistry(engine, base_name, cfg.adapters_dir, explicit, base_cfg)
        if cfg.preload:
            for name in registry.available():
                registry.load(name)
    batcher = Batcher(registry, cfg.max_queue, cfg.batch_size, cfg.batch_wait_ms / 1000)
    api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
    return ServerState(cfg, registry, batcher, api_key)


def _transformers_engine(config: RunConfig, adapter: str | Path | None):
    """(engine for the base, {name: run} served beside it, the base's model section)."""
    if adapter is None:
        model, tokenizer, _ = load_model_and_tokenizer(config.model)
        model.eval()
        return TransformersEngine(model, tokenizer, config.serve.batch_size), {}, config.model
    run = open_run(adapter, config.model)
    if run.is_adapter:  # the run answers under its own name, its base under serve.model_name
        model, _, _ = load_model_and_tokenizer(run.model_cfg)
        tokenizer = run.load_tokenizer()  # the run's saved template wins
        explicit = {Path(adapter).name: Path(adapter)}
    else:  # a fully tuned model: it is the base here
        (model, tokenizer), explicit = run.load(), {}
    model.eval()
    return TransformersEngine(model, tokenizer, config.serve.batch_size), explicit, run.model_cfg


def run_server(state: ServerState) -> None:
    import uvicorn

    cfg = state.cfg
    if cfg.host not in LOOPBACK and not state.api_key:
        console.print(
            f"[yellow]warning: serving on {cfg.host} without an API key; set {API_KEY_ENV}"
        )
    console.print(f"models: {', '.join(state.registry.names())}")
    console.print(f"OpenAI-compatible API on http://{cfg.host}:{cfg.port}/v1")
    uvicorn.run(
        create_app(state),
        host=cfg.host,
        port=cfg.port,
        timeout_graceful_shutdown=int(cfg.shutdown_timeout_s) or None,
        log_level="info",
    )
