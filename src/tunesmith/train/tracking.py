"""train.report_to: the Trainer's tracker integrations, offline and inside the run folder.

Each tracker named in train.report_to logs through transformers' own callback; tunesmith only
points it at RUN/tracking/<tracker> and keeps it offline, through the environment variables the
callbacks read, unless the user has set them:

| tracker | where it writes | variables set when unset |
|---|---|---|
| tensorboard | RUN/tracking/tensorboard (event files) | TENSORBOARD_LOGGING_DIR |
| mlflow | RUN/tracking/mlflow (a local file store) | MLFLOW_TRACKING_URI, MLFLOW_ALLOW_FILE_STORE |
| wandb | RUN/tracking/wandb (offline run) | WANDB_MODE=offline, WANDB_DIR |
| trackio | RUN/tracking/trackio (local database, no Space) | TRACKIO_DIR |

The variables are set only while the trainer is built and trains, then restored, so one process
can train several runs. metrics.jsonl stays the run's record; the trackers get the same logs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

from tunesmith.config.schema import TrainConfig
from tunesmith.runs.folder import RunFolder
from tunesmith.utils.errors import ConfigError

# tracker -> (the module the Trainer's callback imports, the package that provides it)
PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}


def check_trackers(cfg: TrainConfig) -> None:
    """Before the model loads: every tracker of train.report_to is installed, else one sentence
    naming the pip install."""
    missing = [
        package
        for name in cfg.report_to
        for module, package in [PACKAGES[name]]
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise ConfigError(
            f"train.report_to: {', '.join(missing)} not installed; "
            f"pip install {' '.join(missing)} (or pip install 'tunesmith[track]'), "
            "or remove it from train.report_to"
        )


def tracking_arguments(cfg: TrainConfig, run: RunFolder) -> dict:
    """The TrainingArguments keys of the trackers: their list, the run's name, trackio local."""
    return dict(
        report_to=list(cfg.report_to),  # [] none
        run_name=run.root.name,
        project="tunesmith",  # trackio's project
        trackio_space_id=None,  # local only: no Hugging Face Space
        trackio_static_space_id=False,  # and no static Space synced or frozen
    )


def tracking_environment(cfg: TrainConfig, run: RunFolder) -> dict[str, str]:
    """The variables that point the trackers of train.report_to into RUN/tracking, offline;
    those the user has set are left out (theirs win)."""
    root = run.root / "tracking"
    wanted: dict[str, str] = {}
    if "tensorboard" in cfg.report_to:
        wanted["TENSORBOARD_LOGGING_DIR"] = str(root / "tensorboard")
    if "mlflow" in cfg.report_to:
        wanted["MLFLOW_TRACKING_URI"] = (root / "mlflow").resolve().as_uri()
        # MLflow 3 keeps its file store only behind this switch (a database is its new default)
        wanted["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if "wandb" in cfg.report_to:
        wanted["WANDB_MODE"] = "offline"
        wanted["WANDB_DIR"] = str(root / "wandb")
    if "trackio" in cfg.report_to:
        wanted["TRACKIO_DIR"] = str(root / "trackio")
    return {key: value for key, value in wanted.items() if key not in os.environ}


@contextlib.contextmanager
def tracking(cfg: TrainConfig, run: RunFolder) -> Iterator[None]:
    """While the trainer is built and trains: the trackers' variables set (tracking_environment)
    and their folders made; afterwards the environment is as it was."""
    env = tracking_environment(cfg, run)
    for key in ("WANDB_DIR", "TRACKIO_DIR"):
        if key in env:
            os.makedirs(env[key], exist_ok=True)  # wandb wants its dir to exist
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)
