"""`tunesmith serve [CONFIG] [key=value ...] [--adapter RUN] [--log-dir DIR]`."""

from __future__ import annotations

from pathlib import Path


def serve_command(
    config_path: Path | None,
    overrides: list[str],
    adapter: Path | None,
    log_dir: Path | None = None,
) -> None:
    from tunesmith.config.load import load_config
    from tunesmith.runs.folder import RunFolder
    from tunesmith.serve.server import build_state, require_serve_deps, run_server

    require_serve_deps()
    saved = None if adapter is None else RunFolder(adapter).config_path
    if config_path is None and saved is not None and saved.is_file():
        # a run folder alone: its own model section names the base
        config = load_config(saved, overrides, saved=True)
    else:
        config = load_config(config_path, overrides)
    if log_dir is not None:  # --log-dir DIR wins over serve.log_dir
        config.serve.log_dir = str(log_dir)
    run_server(build_state(config, adapter))
