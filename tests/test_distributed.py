"""`tunesmith train --nproc 2` (torchrun, DDP over gloo on CPU) matches one process with the
same global batch, and writes the run folder once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import TRAIN_CLI, run_yaml, step_losses

from tunesmith.config.schema import DistributedConfig
from tunesmith.train.distributed import Launch, check_distributed
from tunesmith.utils.errors import ConfigError


def _config(tmp_path, model_dir, data, name: str, batch_size: int):
    return run_yaml(
        tmp_path,
        model_dir,
        data,
        name,
        method={"type": "full"},  # no dropout: both runs see the same arithmetic
        train={
            "max_steps": 3,
            "batch_size": batch_size,
            "learning_rate": 1e-2,
            "packing": False,
            "sampling": "sequential",  # the same global batches in both runs
            "seed": 7,
            "logging_steps": 1,
            "save_steps": 100,
            "precision": "fp32",
        },
    )


def _train(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_CLI, "train", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir, alpaca_file):
    runs = tmp_path / "runs"
    _train(str(_config(tmp_path, tiny_model_dir, alpaca_file, "single", batch_size=4)))
    _train(str(_config(tmp_path, tiny_model_dir, alpaca_file, "ddp", batch_size=2)), "--nproc", "2")

    expected, got = step_losses(runs / "single"), step_losses(runs / "ddp")
    assert [s for s, _ in got] == [1, 2, 3]
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], rel=1e-4)
    assert expected[0][1] != expected[-1][1]  # it trained

    # written once, by the main process
    index = [json.loads(line) for line in (runs / "index.jsonl").read_text().splitlines()]
    assert [entry["run"] for entry in index].count("ddp") == 1
    summary = json.loads((runs / "ddp" / "summary.json").read_text())
    assert summary["steps"] == 3
    assert len(list(runs.glob("*/summary.json"))) == 2  # single and ddp, no stray run folder
    assert (runs / "ddp" / "model").is_dir()


def test_deepspeed_on_cpu_is_a_one_sentence_config_error(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError) as error:
        check_distributed(DistributedConfig(strategy="deepspeed"))
    message = str(error.value)
    assert message.startswith("train.distributed.strategy: deepspeed") and "ddp" in message
    assert message.count(". ") == 0 and "\n" not in message


def test_deepspeed_on_cpu_fails_before_launching(tmp_path, tiny_model_dir, alpaca_file):
    config = _config(tmp_path, tiny_model_dir, alpaca_file, "deepspeed", batch_size=2)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch; torch.cuda.is_available = lambda: False; " + TRAIN_CLI,
            "train",
            str(config),
            "train.distributed.strategy=deepspeed",
            "--nproc",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "train.distributed.strategy: deepspeed" in done.stdout + done.stderr
    assert not (tmp_path / "runs" / "deepspeed").exists()  # nothing launched, no run folder


def test_torchrun_options():
    assert Launch(nproc=2).torchrun_options() == ["--nproc_per_node", "2", "--standalone"]
    multi = Launch(nproc=4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400)
    assert multi.torchrun_options() == [
        "--nproc_per_node", "4", "--nnodes", "2", "--node_rank", "1",
        "--master_addr", "10.0.0.1", "--master_port", "29400",
    ]  # fmt: skip
