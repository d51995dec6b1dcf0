"""Training on several processes: `tunesmith train CONFIG --nproc N [--nnodes ...]`.

The command relaunches itself through torchrun (`python -m torch.distributed.run`); every
process torchrun starts runs the same `tunesmith train`, sees LOCAL_RANK / WORLD_SIZE and trains
instead of launching again. The Hugging Face Trainer then does DDP by itself (gloo on CPU, NCCL
on CUDA), FSDP2 (CPU or CUDA) or DeepSpeed ZeRO (CUDA only) when train.distributed.strategy
says so.

train.batch_size is per process: the global batch is batch_size x processes x
gradient_accumulation_steps. Only the main process (global rank 0) writes the run folder
(runs/folder.py); the Trainer writes checkpoints from it too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.config.schema import DistributedConfig, RunConfig, TrainConfig
from tunesmith.utils.errors import ConfigError, TunesmithError

if TYPE_CHECKING:
    from tunesmith.runs.folder import RunFolder


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


def check_distributed(cfg: DistributedConfig, launching: bool = False) -> None:
    """Fail before the model loads: DeepSpeed needs CUDA and its package, FSDP torch's FSDP2
    and several processes (launching: this process starts them, torchrun has not yet)."""
    import torch

    for key in ("deepspeed_config", "zero_stage", "zero_offload"):  # a saved config sets all
        default = DistributedConfig.model_fields[key].default
        if getattr(cfg, key) != default and cfg.strategy != "deepspeed":
            raise ConfigError(
                f"train.distributed.{key} is only read with train.distributed.strategy=deepspeed"
            )
    if cfg.strategy == "fsdp" and not fsdp2_available():
        raise ConfigError(
            "train.distributed.strategy: fsdp needs torch's FSDP2 (torch.distributed.fsdp."
            f"fully_shard, torch 2.6 or newer; this is torch {torch.__version__}); use ddp"
        )
    if cfg.strategy == "fsdp" and not launching and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ConfigError(
            "train.distributed.strategy: fsdp shards the model across processes and this run "
            "has one; start it with --nproc 2 or more"
        )
    if cfg.strategy != "deepspeed":
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            "train.distributed.strategy: deepspeed shards the model across CUDA GPUs and none "
            "was found; use fsdp or ddp on CPU"
        )
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "train.distributed.strategy: deepspeed needs the deepspeed package "
            "(pip install deepspeed); or use ddp or fsdp"
        )
    if cfg.deepspeed_config and not Path(cfg.deepspeed_config).is_file():
        raise ConfigError(
            f"train.distributed.deepspeed_config: '{cfg.deepspeed_config}' is not a file"
        )


def fsdp2_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


def distributed_arguments(cfg: TrainConfig, run: RunFolder) -> dict:
    """TrainingArguments for the strategy; plain single-process runs get none."""
    import torch

    arguments: dict = {}
    strategy = cfg.distributed.strategy
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        arguments["ddp_backend"] = "gloo"  # NCCL is CUDA only
    if strategy == "fsdp":
        arguments["fsdp"] = True
        arguments["fsdp_config"] = dict(FSDP_CONFIG)
        if not torch.cuda.is_available():
            shard_on_cpu()
    elif strategy == "deepspeed":
        arguments["deepspeed"] = run_deepspeed_config(cfg, run)
    return arguments


def run_deepspeed_config(cfg: TrainConfig, run: RunFolder) -> dict:
    """The run's DeepSpeed config (train.distributed.deepspeed_config, or one generated from
    train.distributed), checked against the run's settings and kept as RUN/deepspeed.json."""
    from tunesmith.runs.folder import is_main_process

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    given = cfg.distributed.deepspeed_config
    config = read_deepspeed_config(given) if given else deepspeed_config(cfg.distributed)
    check_deepspeed_config(config, cfg, world_size, where=given or "the generated config")
    if is_main_process():
        run.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps(config, indent=2) + "\n"
        (run.root / DEEPSPEED_FILE).write_text(text, encoding="utf-8")
    return config


DEEPSPEED_FILE = "deepspeed.json"


def deepspeed_config(cfg: DistributedConfig) -> dict:
    """ZeRO stage cfg.zero_stage from the run's settings. Batch sizes, accumulation, clipping,
    precision and bucket sizes are "auto": the Trainer fills them in from its TrainingArguments
    (and the model's hidden size), so the two cannot disagree."""
    zero: dict = {
        "stage": cfg.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if cfg.zero_stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            # the Trainer saves whole 16-bit weights, not only ZeRO's partitions
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    if cfg.zero_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "steps_per_print": 2**31 - 1,  # the Trainer logs; DeepSpeed stays quiet
    }


def read_deepspeed_config(path: str) -> dict:
    key = "train.distributed.deepspeed_config"
    if not Path(path).is_file():
        raise ConfigError(f"{key}: '{path}' is not a file")
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{key}: '{path}' is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{key}: '{path}' must hold a JSON object, not {type(config).__name__}")
    return config


def check_deepspeed_config(config: dict, cfg: TrainConfig, world_size: int, where: str) -> None:
    """Each value the run also sets is "auto" or the run's own: a mismatch is one sentence naming
    both keys before any GPU is touched (the Trainer would stop later with a list)."""
    key = "train.distributed.deepspeed_config"
    zero = config.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{key}: {where} sets zero_optimization.stage={stage!r}; use 0 to 3")
    batch = cfg.batch_size * cfg.gradient_accumulation_steps * world_size
    expected = {
        "train_micro_batch_size_per_gpu": (cfg.batch_size, "train.batch_size"),
        "gradient_accumulation_steps": (
            cfg.gradient_accumulation_steps,
            "train.gradient_accumulation_steps",
        ),
        "train_batch_size": (batch, "train.batch_size x gradient_accumulation_steps x processes"),
        "gradient_clipping": (cfg.max_grad_norm, "train.max_grad_norm"),
        "optimizer.params.lr": (cfg.learning_rate, "train.learning_rate"),
        "optimizer.params.weight_decay": (cfg.weight_decay, "train.weight_decay"),
    }
    if cfg.precision != "auto":  # auto: bf16 where the GPU has it, known in the process only
        expected["bf16.enabled"] = (cfg.precision == "bf16", "train.precision")
        expected["fp16.enabled"] = (cfg.precision == "fp16", "train.precision")
    for name, (value, source) in expected.items():
        found = _lookup(config, name)
        if found is not None and found != "auto" and found != value:
            raise ConfigError(
                f"{key}: {where} sets {name}={json.dumps(found)} but {source} gives "
                f'{json.dumps(value)}; set it to "auto" so the Trainer fills it in'
            )


def _lookup(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# FSDP2 (torch's fully_shard) through accelerate: each decoder layer (the model's
# _no_split_modules) is sharded on its own, parameters gathered for its forward and freed after
# it; checkpoints hold the full (gathered) model and optimizer state
FSDP_CONFIG = {
    "version": 2,
    "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "reshard_after_forward": True,
    "state_dict_type": "FULL_STATE_DICT",
    "cpu_ram_efficient_loading": False,
}


def shard_on_cpu() -> None:
    """Let the Trainer shard with FSDP2 on CPU processes (gloo).

    torch's fully_shard runs on CPU over gloo, but accelerate (1.16) keeps its FSDP plugin for
    GPU-like devices only: on CPU it drops the plugin and the Trainer would quietly do DDP. After
    the Trainer builds its Accelerator, the plugin is put back as accelerate would have on a GPU.
    """
    from transformers import Trainer

    create = Trainer.create_accelerator_and_postprocess
    if getattr(create, "shards_on_cpu", False):
        return

    def create_and_shard(self) -> None:
        create(self)
        if self.args.fsdp_plugin_args is None or self.is_fsdp_enabled:
            return
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if state.distributed_type != DistributedType.MULTI_CPU:
            return
        plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
        # as accelerate records it: every later AcceleratorState() copies PartialState's type
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.is_fsdp_enabled = True

    create_and_shard.shards_on_cpu = True
    Trainer.create_accelerator_and_postprocess = create_and_shard


@contextmanager
def whole_weights(trainer, model):
    """The trained model with whole weights, to save; every process enters it together.

    FSDP2 leaves each process one shard of each parameter (a DTensor): every process gathers
    them, in the same order, into plain CPU parameters (tied weights stay one parameter), and
    the model is not trained further. DeepSpeed ZeRO-3 partitions them too: its
    GatheredParameters holds them whole while inside. Other runs: the model as it is.
    """
    if getattr(trainer, "is_fsdp_enabled", False):
        yield _gather_fsdp(model)
    elif _zero_stage(trainer) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield model
    else:
        yield model


def _gather_fsdp(model):
    import torch
    from torch.distributed.tensor import DTensor

    whole: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if isinstance(param, DTensor):
                if id(param) not in whole:
                    tensor = param.full_tensor().detach().cpu()  # one at a time on a GPU
                    whole[id(param)] = torch.nn.Parameter(tensor, param.requires_grad)
                module.register_parameter(name, whole[id(param)])
    return model


def _zero_stage(trainer) -> int | None:
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return None
    return trainer.accelerator.state.deepspeed_plugin.zero_stage


def launch(
    config: RunConfig,
    config_path: Path | None,
    overrides: list[str],
    resume: Path | None,
    options: Launch,
) -> None:
    """Run `tunesmith train` in options.nproc processes on this node through torchrun."""
    check_distributed(config.train.distributed, launching=True)  # before any process starts
    code = subprocess.call(launch_command(config, config_path, overrides, resume, options))
    if code != 0:
        raise TunesmithError(
            f"distributed training failed (torchrun exit code {code}); see the messages above"
        )


def launch_command(
    config: RunConfig,
    config_path: Path | None,
    overrides: list[str],
    resume: Path | None,
    options: Launch,
) -> list[str]:
    """The torchrun command this node runs. The main node (node_rank 0) names and creates the
    run folder once, so every process writes (and resumes) the same one; the other nodes of a
    multi-node run use output.name, the folder on the shared output.dir."""
    from tunesmith.runs.folder import RunFolder

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
        if options.node_rank == 0:
            run = RunFolder.create(config.output, f"{config.train.stage}-{config.method.type}")
            args.append(f"output.name={run.root.name}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *options.torchrun_options(),
        "-m",
        "tunesmith.cli.main",
        "train",
        *args,
    ]
