"""`tunesmith improve train`: the candidate, trained from the production adapter.

The current run's own config.yaml is the starting point (same base model, method settings,
chat template, schedule), with four changes: the method continues the current adapter
(`method.init_adapter`: its weights, r, alpha and targets are the start, so the candidate is
an adapter of the same base the server already holds), the data is the targeted mix of
`tunesmith improve data` (work_dir/data/train.jsonl), the run folder is a new one under
work_dir/runs, and the `train.overrides` of improve.yaml come last. Only LoRA-family runs
(lora, qlora) can be continued; any other method is one sentence saying so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config.load import parse_override, set_dotted, validate
from tunesmith.config.schema import RunConfig
from tunesmith.runs.trained import TrainedRun, open_run
from tunesmith.utils.errors import ConfigError
from tunesmith.workflows.improve.spec import ImproveSpec, source

CONTINUABLE = ("lora", "qlora")


@dataclass
class Candidate:
    run_dir: Path
    config: RunConfig
    summary: dict


def current_run(spec: ImproveSpec, root: Path) -> TrainedRun:
    path = source(root, spec.current)
    if not path.exists():
        raise ConfigError(f"current: {path} does not exist (the trained run in production)")
    run = open_run(path)
    if run.config is None or run.root is None:
        raise ConfigError(f"current: {path} is an artifact folder; name its run folder")
    return run


def candidate_config(
    spec: ImproveSpec, root: Path, train_file: Path, name: str | None = None
) -> RunConfig:
    """The current run's config, continuing its adapter on train_file into a new run folder."""
    run = current_run(spec, root)
    if run.method_cfg.type not in CONTINUABLE:
        raise ConfigError(
            f"current: {run.root} was trained with method {run.method_cfg.type}; improve train "
            f"continues an adapter of {' or '.join(CONTINUABLE)} only"
        )
    if not train_file.is_file():
        raise ConfigError(
            f"{train_file}: no targeted training data (run tunesmith improve data first)"
        )
    data = run.config.model_dump(mode="json", exclude_none=True)
    method = data["method"]
    method["init_adapter"] = str(run.artifact.resolve())
    data["data"].update(
        train=[str(train_file.resolve())],
        format="auto",
        columns={},
        dataset=[],
        registry=None,
        max_samples=None,
    )
    if not all(Path(f).is_file() for f in data["data"].get("eval", [])):
        data["data"]["eval"] = []  # the original held-out files moved away: no eval set
    if not data["data"].get("eval"):
        data["train"].pop("early_stopping", None)
    work = source(root, spec.work_dir)
    data["output"] = {
        "dir": str((work / "runs").resolve()),
        "name": name or spec.train.name or f"candidate-{time.strftime('%Y%m%d-%H%M%S')}",
        "overwrite": False,
    }
    for item in spec.train.overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    return validate(data, source="the candidate's config (current run + train.overrides)")


def retrain(
    spec: ImproveSpec, root: Path, train_file: Path | None = None, name: str | None = None
) -> Candidate:
    """Train the candidate; returns its run folder, config and summary."""
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train import run_stage

    train_file = train_file or source(root, spec.work_dir) / "data" / "train.jsonl"
    config = candidate_config(spec, root, train_file, name)
    run = RunFolder.create(config.output, "candidate")
    result = run_stage(config, run)
    return Candidate(run.root, config, result.summary)
