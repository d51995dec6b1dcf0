"""`tunesmith export CONFIG [RUN_FOLDER] [key=value ...]`."""

from __future__ import annotations

from pathlib import Path

from tunesmith.runs.folder import RunFolder
from tunesmith.utils.errors import TunesmithError


def export_command(args: list[str]) -> None:
    from tunesmith.config.load import load_config
    from tunesmith.export.run import export_run, report

    config_path, source, overrides = split_export_args(args)
    config = load_config(
        config_path,
        overrides,
        saved=source is not None and config_path == RunFolder(source).config_path,
    )
    if source is None:
        source = _latest_trained(config)
    if not source.exists():
        raise TunesmithError(f"run folder '{source}' not found")
    report(export_run(config, source))


def _latest_trained(config) -> Path:
    """output.name, else the newest `<stage>-<method>-*` run of this config with a result."""
    parent = Path(config.output.dir)
    pattern = config.output.name or f"{config.train.stage}-{config.method.type}-*"
    runs = [p for p in parent.glob(pattern) if (p / "adapter").is_dir() or (p / "model").is_dir()]
    if not runs:
        raise TunesmithError(
            f"no trained run matches '{parent / pattern}'; "
            "give the run folder (tunesmith export CONFIG RUN_FOLDER)"
        )
    return max(runs, key=lambda p: p.stat().st_mtime)


def split_export_args(args: list[str]) -> tuple[Path | None, Path | None, list[str]]:
    """(config file, run folder, overrides); a run folder alone uses its own config.yaml."""
    positional = [Path(a) for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if len(positional) > 2:
        raise TunesmithError(f"expected CONFIG [RUN_FOLDER], got {[str(p) for p in positional]}")
    if len(positional) == 1 and positional[0].is_dir():
        run = positional[0]
        return RunFolder(run).config_path, run, overrides
    config = positional[0] if positional else None
    return config, (positional[1] if len(positional) == 2 else None), overrides
