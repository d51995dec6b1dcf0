"""train.report_to: the Trainer's trackers log offline into the run folder, the same losses as
metrics.jsonl; unknown names and missing packages are one sentence before the model loads."""

from __future__ import annotations

import importlib.util
import os

import pytest
from helpers import run_config, step_losses, train_run

from tunesmith.config.load import load_config
from tunesmith.config.schema import TRACKERS
from tunesmith.train.tracking import PACKAGES, check_trackers, tracking_environment
from tunesmith.utils.errors import ConfigError


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_report_to_is_empty_by_default_and_takes_a_list_or_comma_separated_names():
    assert load_config(None, []).train.report_to == []
    assert load_config(None, ["train.report_to=none"]).train.report_to == []
    assert load_config(None, ["train.report_to=tensorboard,mlflow"]).train.report_to == [
        "tensorboard",
        "mlflow",
    ]
    assert load_config(None, ["train.report_to=[wandb, trackio]"]).train.report_to == [
        "wandb",
        "trackio",
    ]
    assert set(PACKAGES) == set(TRACKERS)


def test_unknown_tracker_is_a_config_error_naming_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.report_to=[tensorbord]"])
    message = str(err.value)
    assert "train.report_to" in message and "tensorbord" in message
    assert "tensorboard, mlflow, wandb, trackio" in message


def test_missing_package_is_one_sentence_naming_the_pip_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    cfg = load_config(None, ["train.report_to=[wandb]"]).train
    with pytest.raises(ConfigError) as err:
        check_trackers(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("train.report_to: wandb not installed; pip install wandb")


def test_missing_package_stops_the_run_before_the_model_loads(tmp_path, alpaca_file, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a)
    )
    # the model folder does not exist: loading it would fail with another error
    config = run_config(
        tmp_path, tmp_path / "no-model", alpaca_file, "missing", "train.report_to=[trackio]"
    )
    with pytest.raises(ConfigError, match="pip install trackio"):
        train_run(config)


def test_tracker_variables_point_into_the_run_folder_offline_and_the_users_win(
    tmp_path, monkeypatch
):
    from tunesmith.runs.folder import RunFolder

    run = RunFolder(tmp_path / "run")
    cfg = load_config(None, ["train.report_to=[tensorboard,mlflow,wandb,trackio]"]).train
    for key in ("TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TRACKIO_DIR", "/mine")
    env = tracking_environment(cfg, run)
    assert env["TENSORBOARD_LOGGING_DIR"] == str(run.root / "tracking" / "tensorboard")
    assert env["MLFLOW_TRACKING_URI"].startswith("file://")
    assert env["MLFLOW_TRACKING_URI"].endswith("/run/tracking/mlflow")
    assert env["WANDB_MODE"] == "offline"
    assert env["WANDB_DIR"] == str(run.root / "tracking" / "wandb")
    assert "TRACKIO_DIR" not in env  # set by the user: theirs


def _tiny_run(tmp_path, tiny_model_dir, alpaca_file, name, trackers):
    config = run_config(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        name,
        "train.max_steps=4",
        f"train.report_to=[{trackers}]",
    )
    return train_run(config)


@pytest.mark.skipif(not _installed("tensorboard"), reason="tensorboard not installed")
def test_tensorboard_events_in_the_run_folder_hold_the_losses_of_metrics_jsonl(
    tmp_path, tiny_model_dir, alpaca_file, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    result = _tiny_run(tmp_path, tiny_model_dir, alpaca_file, "tb", "tensorboard")
    logdir = result.run.root / "tracking" / "tensorboard"
    assert list(logdir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(logdir))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    expected = step_losses(result.run.root)
    assert len(expected) == 4
    assert [s for s, _ in logged] == [s for s, _ in expected]
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-5)
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # restored after the run


@pytest.mark.skipif(not _installed("mlflow"), reason="mlflow not installed")
def test_mlflow_local_store_in_the_run_folder_holds_the_losses(
    tmp_path, tiny_model_dir, alpaca_file, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    result = _tiny_run(tmp_path, tiny_model_dir, alpaca_file, "mlf", "mlflow")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # restored after the run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the client that reads it here
    store = result.run.root / "tracking" / "mlflow"
    assert store.is_dir()
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) == 1 and runs[0].info.run_name == "mlf"
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    logged = sorted((m.step, m.value) for m in history)
    expected = step_losses(result.run.root)
    assert [s for s, _ in logged] == [s for s, _ in expected]
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-5)
