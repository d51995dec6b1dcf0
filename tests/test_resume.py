"""A training process killed with SIGKILL, or stopped with SIGTERM, resumes to the same losses as
an uninterrupted run; a resumed run reports the whole run's loss and time."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    TRAIN_CLI,
    run_config,
    run_yaml,
    step_losses,
    train_run,
    write_alpaca,
)
from transformers import Trainer

from tunesmith.runs.folder import RunFolder
from tunesmith.train.checkpoints import STAGING, TOTALS


def _config(tmp_path, model_dir, data, name: str):
    return run_yaml(
        tmp_path,
        model_dir,
        data,
        name,
        method={"type": "lora", "r": 4, "dropout": 0.1},  # dropout: RNG state matters too
        train={
            "max_steps": 120,
            "batch_size": 2,
            "learning_rate": 5e-3,
            "save_steps": 20,
            "save_total_limit": 2,
            "logging_steps": 1,
        },
    )


@pytest.fixture(scope="module", autouse=True)
def one_kernel():
    """Every process of this module multiplies through one kernel: each process times the
    kernels otherwise, and under load two processes can pick differently (these tests compare
    losses bit for bit across processes)."""
    from tunesmith.models import speed

    chosen = list(speed._ONEDNN)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNESMITH_MATMUL_KERNEL", "mm")
        yield
    speed._ONEDNN[:] = chosen  # this process's own choice for the tests that follow


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> Path:
    """An uninterrupted run of _config (once for the tests of this module): its folder."""
    tmp_path = tmp_path_factory.mktemp("reference")
    data = write_alpaca(tmp_path / "train.jsonl")
    config = _config(tmp_path, tiny_model_dir, data, "ref")
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_CLI, "train", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp_path / "runs" / "ref"


def test_sigkill_then_resume_matches_uninterrupted(
    tmp_path, tiny_model_dir, alpaca_file, reference
):
    runs = tmp_path / "runs"
    config = _config(tmp_path, tiny_model_dir, alpaca_file, "killed")
    process = subprocess.Popen(
        [sys.executable, "-c", TRAIN_CLI, "train", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = runs / "killed" / "checkpoints" / "checkpoint-40" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (runs / "killed" / "summary.json").exists(), "the run finished before the kill"

    resumed = subprocess.run(
        [sys.executable, "-c", TRAIN_CLI, "train", "--resume", str(runs / "killed")],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((runs / "killed" / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["steps"] == 120

    expected, got = step_losses(reference), step_losses(runs / "killed")
    # metrics.jsonl is one clean sequence: what the killed run logged past its checkpoint is gone
    assert [step for step, _ in got] == list(range(1, 121))
    assert got == expected  # exact on CPU: model, optimizer, scheduler, RNG and data position
    _assert_whole_run(summary, reference, resumed.stdout)


def _assert_whole_run(summary: dict, reference: Path, stdout: str) -> None:
    """A resumed run's summary and last line report every step of every segment."""
    whole = json.loads((reference / "summary.json").read_text())
    assert summary["segments"] == 2 and whole["segments"] == 1
    mean = sum(loss for _, loss in step_losses(reference)) / 120
    assert whole["train_loss"] == pytest.approx(mean, rel=1e-6)
    assert summary["train_loss"] == pytest.approx(mean, rel=1e-6)
    assert f"(loss {mean:.4f}, {summary['seconds']} s)" in stdout


def _logged_steps(run_dir: Path) -> list[int]:
    """The steps logged so far by a running training (a line being written is skipped)."""
    path, steps = run_dir / "metrics.jsonl", []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            steps.append(json.loads(line)["step"])
    return steps


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_resume_matches_uninterrupted(
    tmp_path, tiny_model_dir, alpaca_file, reference, signum
):
    """SIGTERM (docker stop, schedulers) or Ctrl-C: the step running ends, a checkpoint of it is
    saved, the resume command printed, exit 128 + signal; resuming gives the same losses."""
    runs, name = tmp_path / "runs", "stopped"
    config = _config(tmp_path, tiny_model_dir, alpaca_file, name)
    process = subprocess.Popen(
        [sys.executable, "-c", TRAIN_CLI, "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = runs / name
    deadline = time.monotonic() + 300
    while max(_logged_steps(run), default=0) < 27 and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.005)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-2000:]

    stopped_at = max(_logged_steps(run))
    assert 27 <= stopped_at < 120
    checkpoint = run / "checkpoints" / f"checkpoint-{stopped_at}"
    assert (checkpoint / "trainer_state.json").is_file()
    assert json.loads((checkpoint / TOTALS).read_text())["step"] == stopped_at
    assert RunFolder(run).last_checkpoint() == checkpoint
    assert f"{signal.Signals(signum).name}: stopping after this step" in stderr
    assert f"Resume with: tunesmith train --resume {run}" in stdout
    assert not (run / "summary.json").exists()
    if signum == signal.SIGINT:  # the same stop; the resume is SIGTERM's
        return
    segment = json.loads((checkpoint / TOTALS).read_text())["seconds"]

    resumed = subprocess.run(
        [sys.executable, "-c", TRAIN_CLI, "train", "--resume", str(run)],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == str(checkpoint) and summary["steps"] == 120
    assert step_losses(run) == step_losses(reference)
    _assert_whole_run(summary, reference, resumed.stdout)
    assert summary["seconds"] > segment  # both segments' time


def test_a_save_cut_short_leaves_no_checkpoint_and_resume_uses_the_last_one(
    tmp_path, tiny_model_dir, alpaca_file, monkeypatch
):
    """A crash while checkpoint-4 is being written (after its weights and optimizer, before its
    RNG and trainer state) leaves checkpoint-2 as the only checkpoint; the resumed run starts
    there, clears the staged remains and keeps the last two checkpoints."""
    config = run_config(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "atomic",
        "train.batch_size=2",
        "train.max_steps=8",
        "train.save_steps=2",
        "train.save_total_limit=2",
    )
    run = RunFolder(tmp_path / "runs" / "atomic")
    saves = {"n": 0}
    original = Trainer._save_rng_state

    def crash_on_second_save(self, output_dir):
        saves["n"] += 1
        if saves["n"] == 2:
            raise KeyboardInterrupt("killed while saving")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        train_run(config)
    monkeypatch.setattr(Trainer, "_save_rng_state", original)

    checkpoints = run.checkpoints
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]
    staged = checkpoints / STAGING / "checkpoint-4"
    assert (staged / "optimizer.pt").is_file()  # the half-written save is there, out of sight
    assert not (staged / "trainer_state.json").exists()
    assert run.last_checkpoint() == checkpoints / "checkpoint-2"

    result = train_run(config, resume=True)
    assert result.summary["resumed_from"].endswith("checkpoint-2")
    assert result.summary["steps"] == 8
    assert not (checkpoints / STAGING).exists()
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == [
        "checkpoint-6",
        "checkpoint-8",
    ]
    for folder in checkpoints.glob("checkpoint-*"):
        assert (folder / "trainer_state.json").is_file()
        assert (folder / "adapter_model.safetensors").is_file()


def test_a_second_signal_ends_the_process_at_once(tmp_path, monkeypatch):
    """The first signal asks for a checkpoint at the end of the step; the second does not wait."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from tunesmith.train import callbacks

    ended = []
    monkeypatch.setattr(callbacks, "_exit_now", ended.append)
    previous = signal.getsignal(signal.SIGTERM)
    stop = callbacks.StopOnSignal()
    args = TrainingArguments(str(tmp_path), report_to=[])
    state, control = TrainerState(), TrainerControl()
    with stop.installed():
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop.on_step_end(args, state, control)
        assert not control.should_save  # no signal yet
        signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and ended == []
        state.global_step = 7
        stop.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop and stop.stopped_at == 7
        signal.raise_signal(signal.SIGINT)
        assert ended == [signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) == previous  # the handlers are put back


@pytest.mark.parametrize("resumed", [False, True])
def test_a_signal_while_the_model_loads_stops_before_the_first_step(
    tmp_path, tiny_model_dir, alpaca_file, monkeypatch, resumed
):
    """A stop sent while data and model load (a UI's Stop right after Start or Resume) ends the
    run cleanly before any step: nothing new is saved, the run reads `stopped`, and a resume
    starts from the checkpoint it had."""
    import tunesmith.train.recipe as recipe
    from tunesmith.train.callbacks import TrainingInterrupted

    config = run_config(
        tmp_path, tiny_model_dir, alpaca_file, "early", "train.max_steps=4", "train.save_steps=2"
    )
    run = tmp_path / "runs" / "early"
    if resumed:
        train_run(config)
        shutil.rmtree(run / "checkpoints" / "checkpoint-4")  # as if stopped at step 2
    loaded = recipe.report_trainable

    def signal_while_loading(*args):
        signal.raise_signal(signal.SIGTERM)  # the handler is in place before the model loads
        return loaded(*args)

    monkeypatch.setattr(recipe, "report_trainable", signal_while_loading)
    with pytest.raises(TrainingInterrupted, match="before its first step") as stopped:
        train_run(config, resume=resumed)
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == (["checkpoint-2"] if resumed else [])
    assert stopped.value.step == (2 if resumed else 0)
    process = RunFolder(run).read_process()
    assert process["status"] == "stopped" and "before its first step" in process["error"]
    monkeypatch.setattr(recipe, "report_trainable", loaded)
    assert train_run(config, resume=resumed).summary["steps"] == 4
