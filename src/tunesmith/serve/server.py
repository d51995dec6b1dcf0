"""Build the server from a run config and run it with uvicorn."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tunesmith.config.schema import RunConfig
from tunesmith.models.vlm_engine import engine_for
from tunesmith.runs.inference import create_engine
from tunesmith.runs.trained import load_for_inference, open_run
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
    if adapter is None:  # (a vision-language model loads with its processor: models/vlm.py)
        model, tokenizer = load_for_inference(None, config.model)
        return engine_for(model, tokenizer, config.serve.batch_size), {}, config.model
    run = open_run(adapter, config.model)
    if run.is_adapter:  # the run answers under its own name, its base under serve.model_name
        model, _ = load_for_inference(None, run.model_cfg)
        tokenizer = run.load_tokenizer()  # the run's saved template wins
        explicit = {Path(adapter).name: Path(adapter)}
    else:  # a fully tuned model: it is the base here
        (model, tokenizer), explicit = run.load(), {}
    model.eval()
    return engine_for(model, tokenizer, config.serve.batch_size), explicit, run.model_cfg


def run_server(state: ServerState) -> None:
    """Serve until SIGTERM or Ctrl-C: then stop accepting, give in-flight requests
    serve.shutdown_timeout_s to finish, cancel what is left, and return (exit status 0)."""
    cfg = state.cfg
    if cfg.host not in LOOPBACK and not state.api_key:
        console.print(
            f"[yellow]warning: serving on {cfg.host} without an API key; set {API_KEY_ENV}"
        )
    console.print(f"models: {', '.join(state.registry.names())}")
    for name, split in state.routes.routes.items():
        canary = f", {split.canary_percent}% to {split.canary}" if split.canary else ""
        console.print(f"route {name}: {split.stable}{canary}")
    if state.request_log is not None:
        console.print(f"logging requests and feedback to {state.cfg.log_dir} (PII redacted)")
    console.print(f"OpenAI-compatible API on http://{cfg.host}:{cfg.port}/v1")
    server = graceful_server(uvicorn_config(state, log_level="info"), state)
    # uvicorn re-raises the signal it caught once it has shut down, which would kill the
    # process with SIGTERM's status; a handler of ours makes the re-raise a no-op instead
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print("server stopped")


def _ignore(sig, frame) -> None:
    pass


def uvicorn_config(state: ServerState, **kwargs):
    """uvicorn's settings from the serve section: the app, keep-alive, header and shutdown
    timeouts and the request-head size limit (h11 only: its limits are the ones we set)."""
    import uvicorn

    cfg = state.cfg
    return uvicorn.Config(
        create_app(state),
        host=cfg.host,
        port=cfg.port,
        http=guarded_h11(cfg.read_timeout_s),
        timeout_keep_alive=cfg.keep_alive_timeout_s,
        timeout_graceful_shutdown=cfg.shutdown_timeout_s,
        h11_max_incomplete_event_size=cfg.max_header_bytes,
        **kwargs,
    )


def guarded_h11(read_timeout_s: float):
    """uvicorn's h11 protocol that closes a connection whose request head has not arrived
    `read_timeout_s` after it opened or after its previous response (idle and half-sent
    connections would otherwise stay open for ever: uvicorn times out only keep-alive)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        _head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._check_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_head()
            self._check_head()  # a pipelined request may have started already

        def connection_lost(self, exc) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _await_head(self) -> None:
            self._stop_timer()
            if not self.transport.is_closing():
                self._head_timer = self.loop.call_later(read_timeout_s, self._head_late)

        def _check_head(self) -> None:
            if self._in_request():
                self._stop_timer()

        def _stop_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if not self._in_request() and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11


def _server_class():
    import uvicorn

    class _GracefulServer(uvicorn.Server):
        def __init__(self, config, state: ServerState):
            super().__init__(config)
            self.state = state

        def handle_exit(self, sig, frame) -> None:
            if self.state.closing_since is None:  # the grace starts at the first signal
                self.state.closing_since = time.monotonic()
            self.state.closing = True  # requests on open connections get 503 from now on
            super().handle_exit(sig, frame)

    return _GracefulServer


def graceful_server(config, state: ServerState):
    """uvicorn.Server that marks the state closing and starts the grace clock on SIGTERM."""
    return _server_class()(config, state)
