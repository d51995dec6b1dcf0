"""A training process killed with SIGKILL resumes to the same losses as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import yaml

TRAIN = "from tunesmith.cli.main import app; app()"


def _config(tmp_path, model_dir, data, name: str):
    path = tmp_path / f"{name}.yaml"
    config = {
        "model": {"name_or_path": str(model_dir)},
        "method": {"type": "lora", "r": 4, "dropout": 0.1},  # dropout: RNG state matters too
        "data": {"train": [str(data)]},
        "train": {
            "max_steps": 120,
            "batch_size": 2,
            "learning_rate": 5e-3,
            "save_steps": 20,
            "save_total_limit": 2,
            "logging_steps": 1,
        },
        "output": {"dir": str(tmp_path / "runs"), "name": name},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _losses(run_dir) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(m["step"], m["loss"]) for m in map(json.loads, lines) if "loss" in m]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, alpaca_file):
    runs = tmp_path / "runs"
    reference = subprocess.run(
        [
            sys.executable,
            "-c",
            TRAIN,
            "train",
            str(_config(tmp_path, tiny_model_dir, alpaca_file, "ref")),
        ],
        capture_output=True,
        text=True,
    )
    assert reference.returncode == 0, reference.stderr[-2000:]

    config = _config(tmp_path, tiny_model_dir, alpaca_file, "killed")
    process = subprocess.Popen(
        [sys.executable, "-c", TRAIN, "train", str(config)],
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
        [sys.executable, "-c", TRAIN, "train", "--resume", str(runs / "killed")],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((runs / "killed" / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["steps"] == 120

    expected, got = _losses(runs / "ref"), _losses(runs / "killed")
    # metrics.jsonl is one clean sequence: what the killed run logged past its checkpoint is gone
    assert [step for step, _ in got] == list(range(1, 121))
    assert got == expected  # exact on CPU: model, optimizer, scheduler, RNG and data position
