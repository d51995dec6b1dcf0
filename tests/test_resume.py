"""A training process killed with SIGKILL resumes to the same losses as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from helpers import TRAIN_CLI, run_config, step_losses, train_run, write_run_yaml
from transformers import Trainer

from tunesmith.runs.folder import RunFolder
from tunesmith.train.checkpoints import STAGING


def _config(tmp_path, model_dir, data, name: str):
    return write_run_yaml(
        tmp_path / f"{name}.yaml",
        model_dir,
        data,
        tmp_path / "runs",
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


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, alpaca_file):
    runs = tmp_path / "runs"
    reference = subprocess.run(
        [
            sys.executable,
            "-c",
            TRAIN_CLI,
            "train",
            str(_config(tmp_path, tiny_model_dir, alpaca_file, "ref")),
        ],
        capture_output=True,
        text=True,
    )
    assert reference.returncode == 0, reference.stderr[-2000:]

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

    expected, got = step_losses(runs / "ref"), step_losses(runs / "killed")
    # metrics.jsonl is one clean sequence: what the killed run logged past its checkpoint is gone
    assert [step for step, _ in got] == list(range(1, 121))
    assert got == expected  # exact on CPU: model, optimizer, scheduler, RNG and data position


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
