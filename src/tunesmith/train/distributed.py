"""Training on several processes: `tunesmith train CONFIG --nproc N [--nnodes ...]`.

The command relaunches itself through torchrun (`python -m torch.distributed.run`); every
process torchrun starts runs the same `tunesmith train`, sees LOCAL_RANK / WORLD_SIZE and trains
instead of launching again. The Hugging Face Trainer then does DDP by itself (gloo on CPU, NCCL
on CUDA), or FSDP / DeepSpeed ZeRO when train.distributed.strategy says so (CUDA only).

train.batch_size is per process: the global batch is batch_size x processes x
gradient_accumulation_steps. Only the main process (global rank 0) writes the run folder
(runs/folder.py); the Trainer writes checkpoints from it too.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config.schema import DistributedConfig, RunConfig
from tunesmith.utils.errors import ConfigError, TunesmithError

# ZeRO stage 2 with the values the Trainer fills in ("auto") from TrainingArguments
DEFAULT_DEEPSPEED = {
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
}


@dataclass(frozen=True)
class Launch:
    """torchrun's options: processes on this node, and the nodes of a multi-node run."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def needed(self) -> bool:
        return (self.nproc > 1 or self.nnodes > 1) and not is_torchrun_child()

    def torchrun_options(self) -> list[str]:
        options = ["--nproc_per_node", str(self.nproc)]
        if self.nnodes == 1 and self.master_addr is None and self.master_port is None:
            return [*options, "--standalone"]  # one node: torchrun picks a free port
        return [
            *options,
            "--nnodes", str(self.nnodes),
            "--node_rank", str(self.node_rank),
            "--master_addr", self.master_addr or "127.0.0.1",
            "--master_port", str(self.master_port or 29500),
        ]  # fmt: skip


def is_torchrun_child() -> bool:
    """True inside a process torchrun started (it sets LOCAL_RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_distributed(cfg: DistributedConfig) -> None:
    """FSDP and DeepSpeed need CUDA (and DeepSpeed its package); fail before the model loads."""
    import torch

    if cfg.deepspeed_config is not None and cfg.strategy != "deepspeed":
        raise ConfigError(
            "train.distributed.deepspeed_config is only read with "
            "train.distributed.strategy=deepspeed"
        )
    if cfg.strategy == "ddp":
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"train.distributed.strategy: {cfg.strategy} shards the model across CUDA GPUs and "
            "none was found; use ddp on CPU"
        )
    if cfg.strategy == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                "train.distributed.strategy: deepspeed needs the deepspeed package "
                "(pip install deepspeed); or use ddp or fsdp"
            )
        if cfg.deepspeed_config and not Path(cfg.deepspeed_config).is_file():
            raise ConfigError(
                f"train.distributed.deepspeed_config: '{cfg.deepspeed_config}' is not a file"
            )


def distributed_arguments(cfg: DistributedConfig) -> dict:
    """TrainingArguments for the strategy; plain single-process runs get none."""
    import torch

    arguments: dict = {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        arguments["ddp_backend"] = "gloo"  # NCCL is CUDA only
    if cfg.strategy == "fsdp":
        arguments["fsdp"] = "full_shard auto_wrap"  # wraps the model's decoder layers
    elif cfg.strategy == "deepspeed":
        arguments["deepspeed"] = cfg.deepspeed_config or DEFAULT_DEEPSPEED
    return arguments


def launch(
    config: RunConfig,
    config_path: Path | None,
    overrides: list[str],
    resume: Path | None,
    options: Launch,
) -> None:
    """Run `tunesmith train` in options.nproc processes on this node through torchrun."""
    from tunesmith.runs.folder import RunFolder

    check_distributed(config.train.distributed)  # before any process starts
    args = [str(config_path)] if config_path else []
    args += overrides
    if resume:
        args += ["--resume", str(resume)]
    else:
        if options.nnodes > 1 and config.output.name is None:
            raise ConfigError(
                "output.name: a multi-node run needs a fixed run folder name shared by every "
                "node (e.g. output.name=my_run on a shared output.dir)"
            )
        # name the run folder once, so every process writes (and resumes) the same one
        run = RunFolder.create(config.output, f"{config.train.stage}-{config.method.type}")
        args.append(f"output.name={run.root.name}")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *options.torchrun_options(),
        "-m",
        "tunesmith.cli.main",
        "train",
        *args,
    ]
    code = subprocess.call(command)
    if code != 0:
        raise TunesmithError(
            f"distributed training failed (torchrun exit code {code}); see the messages above"
        )
