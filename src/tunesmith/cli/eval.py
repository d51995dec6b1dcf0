"""`tunesmith eval CONFIG [RUN_FOLDER] [key=value ...]`, and the evaluation after `train`."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from tunesmith.config.schema import RunConfig
from tunesmith.runs.folder import RunFolder
from tunesmith.utils.console import console
from tunesmith.utils.errors import TunesmithError


def eval_command(args: list[str]) -> dict:
    """Evaluate as the config's eval section says; a run folder alone brings its own config."""
    from tunesmith.config.load import load_config
    from tunesmith.evaluation.runner import run_eval

    config_path, run_dir, overrides = split_eval_args(args)
    saved = config_path is None and run_dir is not None and RunFolder(run_dir).config_path.is_file()
    if saved:
        config_path = RunFolder(run_dir).config_path
    if config_path is None and not overrides:
        raise TunesmithError(
            "give a config file with an eval section (tunesmith eval eval.yaml [RUN_FOLDER]), "
            "a run folder, or key=value overrides"
        )
    report = run_eval(load_config(config_path, overrides, saved=saved), run_dir)
    print_summary(report)
    return report


def eval_after_train(config: RunConfig, run_root: Path) -> dict | None:
    """`tunesmith train` evaluates the new run when eval.after_train is on."""
    from tunesmith.evaluation.runner import run_eval
    from tunesmith.runs.folder import is_main_process

    # under torchrun every process trains, but one evaluates
    if not (config.eval.after_train and config.eval.tasks and is_main_process()):
        return None
    report = run_eval(config, run_root)
    print_summary(report)
    return report


def split_eval_args(args: list[str]) -> tuple[Path | None, Path | None, list[str]]:
    """(config file, run folder, overrides): a folder is the run, a file the config."""
    paths = [Path(a) for a in args if "=" not in a]
    folders = [p for p in paths if p.is_dir()]
    files = [p for p in paths if not p.is_dir()]
    if len(folders) > 1 or len(files) > 1:
        raise TunesmithError(
            f"expected at most one config file and one run folder, got {[str(p) for p in paths]}; "
            "overrides need key=value"
        )
    for path in files:
        if not path.is_file() and path.suffix not in (".yaml", ".yml"):
            raise TunesmithError(f"'{path}' is neither a config file nor a run folder")
    config = files[0] if files else None
    return config, (folders[0] if folders else None), [a for a in args if "=" in a]


def print_summary(report: dict) -> None:
    compare = report.get("compare")
    scores = report["results"]["model"]["scores"]
    table = Table(title="eval: model vs baseline" if compare else "eval")
    if compare:
        for column in ("metric", "baseline", "model", "diff", "CI", "win/tie/loss"):
            table.add_column(column)
        for metric, c in compare.items():
            color = (
                "green"
                if c["significant"] and (c["diff"] > 0) == c["higher_is_better"]
                else ("red" if c["significant"] else "white")
            )
            table.add_row(
                metric,
                f"{c['mean_a']:.4g}",
                f"{c['mean_b']:.4g}",
                f"[{color}]{c['diff']:+.4g}",
                f"[{c['ci_low']:.4g}, {c['ci_high']:.4g}]",
                f"{c['wins']}/{c['ties']}/{c['losses']}",
            )
    else:
        table.add_column("metric")
        table.add_column("mean")
        for metric, values in scores.items():
            present = [v for v in values if v is not None]
            table.add_row(metric, f"{sum(present) / len(present):.4g}" if present else "-")
    console.print(table)
    for role, result in report["results"].items():
        tasks = result["tasks"]
        if tasks.get("perplexity", {}).get("perplexity"):
            console.print(f"{role}: response perplexity {tasks['perplexity']['perplexity']:.4g}")
        if "speed" in tasks:
            s = tasks["speed"]
            console.print(
                f"{role}: latency p50 {s['latency_p50_s']:.3f} s, p95 {s['latency_p95_s']:.3f} s, "
                f"{s['tokens_per_s'] or 0:.1f} tokens/s, {s['size_on_disk_mb']:.1f} MB on disk"
            )
