"""The training monitor on the tiny Llama: alerts and their actions, metrics, diagnosis, early
stopping and the plateau schedule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import train_tiny
from safetensors.torch import load_file
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.config.load import load_config
from tunesmith.config.schema import MonitorConfig
from tunesmith.runs.folder import RunFolder, read_jsonl
from tunesmith.train.monitor import classify_loss, gradient_health, loss_trend, slope
from tunesmith.train.trainer import CausalLMTrainer
from tunesmith.utils.errors import ConfigError

# every run here: full fine-tuning, six steps at a rate that moves the tiny model
FULL = ("method.type=full", "train.max_steps=6", "train.learning_rate=1e-2")


def _train(tmp_path, model_dir, data, name, *overrides):
    return train_tiny(tmp_path, model_dir, data, name, *FULL, *overrides)


def _training_logs(run: RunFolder) -> list[dict]:
    return [m for m in read_jsonl(run.metrics_path) if "loss" in m]


def _all_finite(path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(path).values())


@pytest.fixture
def nan_at_steps(monkeypatch):
    """Make the training loss NaN on the given optimizer steps (1-based), deterministically."""

    def inject(*steps: int) -> None:
        original = CausalLMTrainer.compute_loss

        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = original(self, model, inputs, *args, **kwargs)
            if model.training and self.state.global_step + 1 in steps:
                return loss * float("nan")  # NaN gradients flow back through every weight
            return loss

        monkeypatch.setattr(CausalLMTrainer, "compute_loss", compute_loss)

    return inject


# --- measurements and diagnosis (no training) ---------------------------------------------------


def test_trend_slope_matches_numpy_polyfit():
    rng = np.random.default_rng(0)
    values = list(3.0 - 0.05 * np.arange(30) + rng.normal(0, 0.1, 30))
    assert slope(values) == pytest.approx(np.polyfit(np.arange(30), values, 1)[0], rel=1e-9)
    # the trend is the slope over the last 20 logged losses, and needs at least 5 of them
    last20 = values[-20:]
    assert loss_trend(values) == pytest.approx(np.polyfit(np.arange(20), last20, 1)[0], rel=1e-9)
    assert loss_trend(values[:4]) is None
    assert loss_trend(values[:5]) == pytest.approx(np.polyfit(np.arange(5), values[:5], 1)[0])


@pytest.mark.parametrize(
    ("losses", "trend"),
    [
        ([3.0 - 0.1 * i for i in range(20)], "decreasing"),
        ([1.0 + 0.001 * (-1) ** i for i in range(20)], "plateau"),
        ([1.0 + 0.05 * i for i in range(10)], "increasing"),
        ([1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 4.0, 5.0, 6.0, 7.0], "diverged"),
        ([1.0, 0.9, 0.8, 0.7, math.nan, math.nan, math.nan], "diverged"),
        ([1.0, 0.9, 0.8, math.nan, 0.7, 0.6, 0.5], "decreasing"),  # one skipped NaN step
        ([1.0, 0.9, 0.8], "insufficient_data"),
    ],
)
def test_loss_curve_classification(losses, trend):
    assert classify_loss(losses)["trend"] == trend


def test_gradient_health_names_the_main_problem():
    cfg = MonitorConfig()
    assert gradient_health([0.5, 1.0, 2.0, 0.8], cfg)["verdict"] == "healthy"
    vanishing = gradient_health([1e-9, 1e-9, 1e-8, 0.5], cfg)
    assert vanishing["verdict"] == "vanishing" and vanishing["vanishing_share"] == 0.75
    assert gradient_health([5e3, 1.0, 2e4, 1.0], cfg)["verdict"] == "exploding"
    assert gradient_health([math.nan, 1.0, 1.0], cfg)["verdict"] == "non_finite"


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.monitor.actions.spike=skip"], "train.monitor.actions.spike: got 'skip'"),
        (["train.monitor.actions.nan=halt"], "train.monitor.actions.nan: got 'halt'"),
        (["train.monitor.spike_factor=0.5"], "train.monitor.spike_factor"),
        (
            ["train.lr_scheduler=reduce_on_plateau", "train.warmup_ratio=0.1"],
            "train.warmup_ratio: got '0.1': Value error, reduce_on_plateau has no warmup",
        ),
        (["train.early_stopping.mode=lowest"], "train.early_stopping.mode: got 'lowest'"),
    ],
)
def test_config_errors_name_the_key(overrides, expected):
    with pytest.raises(ConfigError, match="invalid configuration") as caught:
        load_config(None, overrides)
    assert expected in str(caught.value)


def test_early_stopping_metric_gets_the_eval_prefix():
    cfg = load_config(None, ["train.early_stopping.metric=loss"]).train.early_stopping
    assert (cfg.metric, cfg.mode, cfg.patience, cfg.min_delta) == ("eval_loss", "min", 3, 0.0)
    assert load_config(None, []).train.early_stopping is None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.early_stopping.patience=1", "train.early_stopping needs eval data"),
        ("train.lr_scheduler=reduce_on_plateau", "reduce_on_plateau lowers the rate"),
    ],
)
def test_eval_driven_settings_without_eval_data_fail_early(
    tmp_path, tiny_model_dir, alpaca_file, override, expected
):
    with pytest.raises(ConfigError, match=expected) as caught:
        _train(tmp_path, tiny_model_dir, alpaca_file, "no-eval", override)
    assert "data.eval" in str(caught.value)


# --- training -----------------------------------------------------------------------------------


def test_metrics_carry_memory_trend_and_plots(tmp_path, tiny_model_dir, alpaca_file):
    result = _train(tmp_path, tiny_model_dir, alpaca_file, "metrics", "train.monitor.plot_every=2")
    logs = _training_logs(result.run)
    assert len(logs) == 6
    assert all(m["rss_mb"] > 10 and m["rss_peak_mb"] >= m["rss_mb"] * 0.99 for m in logs)
    losses = [m["loss"] for m in logs]
    assert [m["loss_trend"] for m in logs[:4]] == [None] * 4
    for n in (5, 6):  # the trend written with the n-th log is the fit over the first n losses
        fit = np.polyfit(np.arange(n), losses[:n], 1)[0]
        assert logs[n - 1]["loss_trend"] == pytest.approx(fit, abs=1e-6)
    assert (result.run.plots / "training.png").stat().st_size > 1000
    assert (result.run.plots / "loss.png").stat().st_size > 1000
    diagnosis = result.summary["diagnosis"]
    assert diagnosis["loss"]["trend"] == "decreasing"  # lr 1e-2 on eight records: it memorises
    assert diagnosis["gradients"]["verdict"] == "healthy"
    assert result.summary["alerts"] == {} and result.summary["stopped_by"] is None


def test_warn_alerts_are_written_once_and_training_completes(tmp_path, tiny_model_dir, alpaca_file):
    result = _train(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "warn",
        "train.monitor.max_loss=1e-3",
        "train.monitor.stall_seconds=1e-6",
    )
    alerts = result.run.read_alerts()
    # conditions true on every step are reported once, when they start
    assert sorted((a["kind"], a["step"], a["action"]) for a in alerts) == [
        ("loss_high", 1, "warn"),
        ("stalled", 1, "warn"),
    ]
    loss_high = next(a for a in alerts if a["kind"] == "loss_high")
    assert loss_high["threshold"] == 1e-3 and loss_high["value"] > 1e-3
    assert {"message", "time"} <= loss_high.keys()
    assert result.summary["steps"] == 6 and result.summary["stopped_by"] is None
    assert result.summary["alerts"] == {"loss_high": 1, "stalled": 1}


def test_memory_limit_stops_with_a_checkpoint(tmp_path, tiny_model_dir, alpaca_file):
    result = _train(tmp_path, tiny_model_dir, alpaca_file, "memory", "train.monitor.max_rss_mb=1")
    assert result.summary["stopped_by"] == {"kind": "memory", "step": 1}
    assert result.summary["steps"] == 1
    assert result.run.last_checkpoint().name == "checkpoint-1"
    index = read_jsonl(result.run.root.parent / "index.jsonl")
    assert index[-1]["status"] == "stopped"


def test_nan_stop_saves_a_finite_checkpoint_and_resume_continues(
    tmp_path, tiny_model_dir, alpaca_file, nan_at_steps
):
    nan_at_steps(3)
    result = _train(tmp_path, tiny_model_dir, alpaca_file, "nan-stop")
    run = result.run
    [alert] = run.read_alerts()
    assert (alert["kind"], alert["step"], alert["action"], alert["value"]) == (
        "nan",
        3,
        "stop",
        "nan",
    )
    assert result.summary["stopped_by"] == {"kind": "nan", "step": 3}
    assert result.summary["steps"] == 3
    logs = _training_logs(run)
    assert [m["step"] for m in logs] == [1, 2, 3] and math.isnan(logs[-1]["loss"])
    checkpoint = run.last_checkpoint()
    assert checkpoint.name == "checkpoint-3"
    assert _all_finite(checkpoint / "model.safetensors")  # the NaN step was never applied

    resumed = CliRunner().invoke(app, ["train", "--resume", str(run.root)])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((run.root / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["resumed_from"].endswith("checkpoint-3")
    assert summary["stopped_by"] is None and summary["alerts"] == {"nan": 1}
    assert [m["step"] for m in _training_logs(run)] == [1, 2, 3, 4, 5, 6]
    assert _all_finite(run.model_dir / "model.safetensors")


def test_nan_skip_keeps_weights_finite_and_counts_skips(
    tmp_path, tiny_model_dir, alpaca_file, nan_at_steps
):
    nan_at_steps(2, 4)
    result = _train(
        tmp_path, tiny_model_dir, alpaca_file, "nan-skip", "train.monitor.actions.nan=skip"
    )
    assert result.summary["steps"] == 6 and result.summary["stopped_by"] is None
    assert result.summary["skipped_steps"] == 2
    assert [(a["kind"], a["step"]) for a in result.run.read_alerts()] == [("nan", 2), ("nan", 4)]
    assert _all_finite(result.run.model_dir / "model.safetensors")
    losses = [m["loss"] for m in _training_logs(result.run)]
    assert [math.isnan(x) for x in losses] == [False, True, False, True, False, False]
    assert losses[-1] < losses[0]  # training went on learning around the skipped steps


def test_nan_warn_lets_the_step_through(tmp_path, tiny_model_dir, alpaca_file, nan_at_steps):
    """The control for the skip test: without skipping, one NaN step poisons the weights."""
    nan_at_steps(2)
    result = _train(
        tmp_path, tiny_model_dir, alpaca_file, "nan-warn", "train.monitor.actions.nan=warn"
    )
    assert result.summary["skipped_steps"] == 0 and result.summary["steps"] == 6
    assert [(a["kind"], a["step"]) for a in result.run.read_alerts()] == [("nan", 2)]  # once
    assert not _all_finite(result.run.model_dir / "model.safetensors")
    assert result.summary["diagnosis"]["loss"]["trend"] == "diverged"


def test_early_stopping_stops_and_keeps_the_best_checkpoint(tmp_path, tiny_model_dir, alpaca_file):
    result = _train(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "early",
        f"data.eval={alpaca_file}",
        "train.learning_rate=0.5",  # far too high: the eval loss gets worse after a first step
        "train.max_steps=20",
        "train.save_steps=1",
        "train.save_total_limit=1",
        "train.early_stopping.patience=1",
    )
    evals = [m for m in read_jsonl(result.run.metrics_path) if "eval_loss" in m]
    best = min(evals, key=lambda m: m["eval_loss"])
    assert result.summary["steps"] < 20
    assert result.summary["steps"] == best["step"] + 1  # one evaluation without improvement
    assert result.summary["best"]["step"] == best["step"]
    assert result.summary["best"]["value"] == pytest.approx(best["eval_loss"])
    kept = result.run.checkpoints / f"checkpoint-{best['step']}"
    assert result.summary["best"]["checkpoint"] == str(kept)
    # the saved model is the best checkpoint's, not the last step's
    saved = load_file(result.run.model_dir / "model.safetensors")
    at_best = load_file(kept / "model.safetensors")
    assert all(torch.equal(saved[name], at_best[name]) for name in at_best)


def test_reduce_on_plateau_halves_the_rate_when_eval_stalls(tmp_path, tiny_model_dir, alpaca_file):
    result = _train(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "plateau",
        f"data.eval={alpaca_file}",
        "train.lr_scheduler=reduce_on_plateau",
        "train.learning_rate=0.5",
        "train.max_steps=8",
        "train.save_steps=1",
    )
    rates = [m["learning_rate"] for m in _training_logs(result.run)]
    assert rates[0] == pytest.approx(0.5)
    assert rates[-1] < 0.5 and all(r in (0.5, 0.25, 0.125, 0.0625) for r in rates)
    assert rates == sorted(rates, reverse=True)


def _spikes(tmp_path, losses, **cfg) -> list[int]:
    """Steps of the spike alerts the monitor raises on a series of logged losses."""
    from types import SimpleNamespace

    from tunesmith.train.monitor import TrainingMonitor

    run = RunFolder(tmp_path / "spikes")
    run.root.mkdir(parents=True, exist_ok=True)
    monitor = TrainingMonitor(MonitorConfig(**cfg), run)
    control = SimpleNamespace(should_training_stop=False, should_save=False)
    for step, loss in enumerate(losses, 1):
        monitor.on_log(None, SimpleNamespace(global_step=step), control, logs={"loss": loss})
    return [a["step"] for a in run.read_alerts() if a["kind"] == "spike"]


def _noisy_falling(n=400, seed=0) -> list[float]:
    # small batches: each logged loss is the falling curve times heavy batch-to-batch noise
    rng = np.random.default_rng(seed)
    curve = 0.02 + 1.6 * np.exp(-np.arange(n) / 60)
    return [float(x) for x in curve * rng.lognormal(0.0, 0.6, n)]


def test_noisy_but_falling_loss_raises_no_spike(tmp_path):
    from tunesmith.train.monitor import TREND_WINDOW

    losses = _noisy_falling()
    # the old rule (3 x the mean of the last 20) alerted on this healthy series
    old = [
        i
        for i in range(5, len(losses))
        if losses[i] > 3 * np.mean(losses[max(0, i - TREND_WINDOW) : i])
    ]
    assert len(old) > 3
    assert _spikes(tmp_path, losses) == []


def test_a_real_spike_still_raises_one_alert(tmp_path):
    losses = _noisy_falling()[:100]
    steady = [2.0 + 0.05 * math.sin(i) for i in range(30)]
    assert _spikes(tmp_path / "a", [*steady, 8.0, *steady]) == [31]
    noisy = [*losses[:80], 40 * float(np.median(losses[60:80])), *losses[80:]]
    assert _spikes(tmp_path / "b", noisy) == [81]
