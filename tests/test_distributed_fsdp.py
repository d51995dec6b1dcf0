"""Training past one process beyond DDP: FSDP2 on two CPU processes (gloo) matches one process
with the same global batch, for full fine-tuning and LoRA, and resumes from its checkpoint to
the same losses; the DeepSpeed ZeRO config is generated into the run folder, checked against the
run's settings, and refused with one sentence where it cannot run; a multi-node launch is the
torchrun command each node needs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from helpers import TRAIN_CLI, step_losses, train_run, write_alpaca
from safetensors.torch import load_file

from tunesmith.config.load import load_config
from tunesmith.config.schema import DistributedConfig, TrainConfig
from tunesmith.runs.folder import RunFolder
from tunesmith.train.distributed import (
    DEEPSPEED_FILE,
    Launch,
    check_deepspeed_config,
    check_distributed,
    distributed_arguments,
    launch_command,
)
from tunesmith.utils.errors import ConfigError

# deterministic and the same global batches: 4 examples a step, in file order, no dropout
SAME_STEPS = (
    "train.max_steps=4",
    "train.save_steps=2",
    "train.learning_rate=1e-2",
    "train.lr_scheduler=constant",
    "train.packing=false",
    "train.sampling=sequential",
    "train.seed=7",
    "train.logging_steps=1",
    "train.precision=fp32",
)
FULL = ("method.type=full",)
LORA = ("method.type=lora", "method.r=4", "method.dropout=0.0")


def _overrides(model_dir, data, runs, name: str, *more: str) -> list[str]:
    return [
        f"model.name_or_path={model_dir}",
        f"data.train={data}",
        f"output.dir={runs}",
        f"output.name={name}",
        *SAME_STEPS,
        *more,
    ]


def _one_process(model_dir, data, runs, name: str, *method: str):
    """The reference: one process, batch 4, in this process."""
    overrides = _overrides(model_dir, data, runs, name, *method, "train.batch_size=4")
    return train_run(load_config(None, overrides))


def _two_processes(*args: str) -> None:
    """`tunesmith train ... --nproc 2` with FSDP: batch 2 per process, the same global batch."""
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_CLI, "train", *args, "--nproc", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def _fsdp(model_dir, data, runs, name: str, *method: str) -> None:
    overrides = _overrides(model_dir, data, runs, name, *method, "train.batch_size=2")
    _two_processes(*overrides, "train.distributed.strategy=fsdp")


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory, tiny_model_dir, one_thread):
    """A full fine-tune, in one process and in two FSDP processes, and the losses each logged."""
    root = tmp_path_factory.mktemp("fsdp-full")
    data, runs = write_alpaca(root / "train.jsonl"), root / "runs"
    _one_process(tiny_model_dir, data, runs, "single", *FULL)
    _fsdp(tiny_model_dir, data, runs, "fsdp", *FULL)
    return runs, step_losses(runs / "single"), step_losses(runs / "fsdp")


def test_fsdp_full_fine_tuning_on_two_cpu_processes_matches_one(full_runs):
    runs, expected, got = full_runs
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], rel=1e-5)
    assert expected[0][1] != expected[-1][1]  # it trained
    # sharded: the Trainer saved through FSDP (a DDP or single run writes no such file)
    assert (runs / "fsdp" / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    assert not list((runs / "single" / "checkpoints").glob("*/pytorch_model_fsdp.bin"))
    # the saved model is whole (gathered from the shards) and the same weights
    one = load_file(runs / "single" / "model" / "model.safetensors")
    two = load_file(runs / "fsdp" / "model" / "model.safetensors")
    assert sorted(two) == sorted(one)
    assert all(two[k].shape == one[k].shape for k in one)
    assert max((two[k] - one[k]).abs().max().item() for k in one) < 1e-4


def test_fsdp_resumes_from_its_checkpoint_to_the_same_losses(full_runs):
    runs, _, uninterrupted = full_runs
    run = runs / "fsdp"
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")  # as if stopped after step 2
    (run / "summary.json").unlink()
    _two_processes("--resume", str(run))

    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["segments"] == 2
    resumed = step_losses(run)
    assert [s for s, _ in resumed] == [1, 2, 3, 4]  # steps 3 and 4 trained again
    assert [loss for _, loss in resumed] == pytest.approx(
        [loss for _, loss in uninterrupted], rel=1e-5
    )


def test_fsdp_lora_on_two_cpu_processes_matches_one(tmp_path, tiny_model_dir, one_thread):
    data, runs = write_alpaca(tmp_path / "train.jsonl"), tmp_path / "runs"
    _one_process(tiny_model_dir, data, runs, "single", *LORA, "train.max_steps=3")
    _fsdp(tiny_model_dir, data, runs, "fsdp", *LORA, "train.max_steps=3")

    expected, got = step_losses(runs / "single"), step_losses(runs / "fsdp")
    assert [s for s, _ in got] == [1, 2, 3]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], rel=1e-5)
    assert expected[0][1] != expected[-1][1]
    assert (runs / "fsdp" / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    one = load_file(runs / "single" / "adapter" / "adapter_model.safetensors")
    two = load_file(runs / "fsdp" / "adapter" / "adapter_model.safetensors")
    assert sorted(two) == sorted(one) and any("lora_A" in k for k in one)
    assert max((two[k] - one[k]).abs().max().item() for k in one) < 1e-5


# --- DeepSpeed: generated, checked, guarded (no CUDA and no deepspeed package needed) ---


def _train(**distributed) -> TrainConfig:
    return TrainConfig(
        batch_size=2,
        gradient_accumulation_steps=3,
        max_grad_norm=0.5,
        precision="bf16",
        distributed=DistributedConfig(strategy="deepspeed", **distributed),
    )


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_config_is_generated_into_the_run_folder(tmp_path, monkeypatch, stage):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    run = RunFolder(tmp_path / "run")
    arguments = distributed_arguments(_train(zero_stage=stage, zero_offload=True), run)

    config = arguments["deepspeed"]
    assert json.loads((run.root / DEEPSPEED_FILE).read_text()) == config  # the run's record
    zero = config["zero_optimization"]
    assert zero["stage"] == stage and zero["offload_optimizer"]["device"] == "cpu"
    # what the Trainer sets stays "auto": it fills them in, so they cannot disagree
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size"):
        assert config[key] == "auto"
    assert config["gradient_accumulation_steps"] == config["gradient_clipping"] == "auto"
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
    if stage == 3:  # weights sharded too: gathered whole on save, offloaded with the optimizer
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        assert zero["offload_param"]["device"] == "cpu"
        assert zero["stage3_prefetch_bucket_size"] == "auto"
    else:
        assert "offload_param" not in zero and "stage3_prefetch_bucket_size" not in zero


@pytest.mark.parametrize("stage", [2, 3])
def test_the_trainer_fills_every_auto_value_from_the_run(tmp_path, stage):
    """transformers' own filling (HfTrainerDeepSpeedConfig, whose base needs the deepspeed
    package: here its methods on accelerate's plain base) leaves no "auto" and the run's values."""
    from types import SimpleNamespace

    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig as Trainers

    from tunesmith.train.arguments import trainer_kwargs
    from tunesmith.train.distributed import deepspeed_config

    class Filled(HfDeepSpeedConfig):
        is_auto, fill_match, fill_only = Trainers.is_auto, Trainers.fill_match, Trainers.fill_only
        trainer_config_process = Trainers.trainer_config_process
        trainer_config_finalize = Trainers.trainer_config_finalize

    cfg = _train(zero_stage=stage)
    ddp = cfg.model_copy(update={"distributed": DistributedConfig()})  # no deepspeed package
    args = TrainingArguments(**trainer_kwargs(ddp, RunFolder(tmp_path / "run"), has_eval=False))
    filled = Filled(deepspeed_config(cfg.distributed))
    filled.mismatches = []
    filled.trainer_config_process(args)
    filled.trainer_config_finalize(
        args, SimpleNamespace(config=SimpleNamespace(hidden_size=32)), 10
    )

    config = filled.config
    assert "auto" not in json.dumps(config) and not filled.mismatches
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["train_batch_size"] == 6
    assert config["gradient_accumulation_steps"] == 3 and config["gradient_clipping"] == 0.5
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert config["zero_optimization"]["reduce_bucket_size"] == 32 * 32
    check_deepspeed_config(config, cfg, 1, "the filled config")  # the run's own values pass


def test_a_given_deepspeed_config_that_disagrees_with_the_run_is_one_sentence(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("WORLD_SIZE", "4")
    given = tmp_path / "ds.json"
    given.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {}}))
    with pytest.raises(ConfigError) as error:
        distributed_arguments(_train(deepspeed_config=str(given)), RunFolder(tmp_path / "run"))
    assert str(error.value) == (
        f"train.distributed.deepspeed_config: {given} sets train_micro_batch_size_per_gpu=8 but "
        'train.batch_size gives 2; set it to "auto" so the Trainer fills it in'
    )
    assert not (tmp_path / "run" / DEEPSPEED_FILE).exists()

    cfg = _train()  # the global batch: 2 per process x 3 accumulated x 4 processes
    check_deepspeed_config({"train_batch_size": 24, "bf16": {"enabled": True}}, cfg, 4, "x")
    for wrong, key in [
        ({"train_batch_size": 8}, "train_batch_size=8"),
        ({"gradient_clipping": 1.0}, "gradient_clipping=1.0"),
        ({"bf16": {"enabled": False}}, "bf16.enabled=false"),
        ({"zero_optimization": {"stage": 5}}, "zero_optimization.stage=5"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_deepspeed_config(wrong, cfg, 4, "x")
    given.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        distributed_arguments(_train(deepspeed_config=str(given)), RunFolder(tmp_path / "run"))


@pytest.mark.parametrize("stage", [2, 3])
def test_zero3_saves_inside_deepspeeds_gathered_parameters(monkeypatch, stage):
    """ZeRO-3 partitions the weights: the artifact is written while DeepSpeed holds them whole
    (its GatheredParameters, stood in for here); ZeRO-2 keeps whole weights in every process."""
    import types
    from types import SimpleNamespace

    import torch

    from tunesmith.train.distributed import whole_weights

    events: list = []

    class GatheredParameters:
        def __init__(self, params, modifier_rank):
            events.append(("gather", len(params), modifier_rank))

        def __enter__(self):
            events.append("in")

        def __exit__(self, *exc):
            events.append("out")

    deepspeed = types.ModuleType("deepspeed")
    deepspeed.zero = SimpleNamespace(GatheredParameters=GatheredParameters)
    monkeypatch.setitem(sys.modules, "deepspeed", deepspeed)
    plugin = SimpleNamespace(zero_stage=stage)
    trainer = SimpleNamespace(
        is_fsdp_enabled=False,
        is_deepspeed_enabled=True,
        accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)),
    )
    model = torch.nn.Linear(2, 2)  # weight and bias
    with whole_weights(trainer, model) as whole:
        assert whole is model
        events.append("save")
    assert events == ([("gather", 2, None), "in", "save", "out"] if stage == 3 else ["save"])


def _one_sentence(message: str) -> None:
    assert message.startswith("train.distributed.") and "\n" not in message
    assert message.count(". ") == 0


def test_deepspeed_without_cuda_is_one_sentence(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError) as error:
        check_distributed(DistributedConfig(strategy="deepspeed", zero_stage=3))
    _one_sentence(str(error.value))
    assert "CUDA" in str(error.value) and "fsdp or ddp on CPU" in str(error.value)


def test_deepspeed_without_its_package_is_one_sentence(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepspeed" else find_spec(name, *a),
    )
    with pytest.raises(ConfigError) as error:
        check_distributed(DistributedConfig(strategy="deepspeed"))
    _one_sentence(str(error.value))
    assert "pip install deepspeed" in str(error.value)


def test_zero_settings_without_deepspeed_are_refused():
    with pytest.raises(ConfigError, match=r"zero_stage is only read with .*strategy=deepspeed"):
        check_distributed(DistributedConfig(strategy="fsdp", zero_stage=3))
    check_distributed(DistributedConfig(strategy="fsdp"), launching=True)  # FSDP runs on CPU


def test_fsdp_in_one_process_is_one_sentence(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError) as error:
        check_distributed(DistributedConfig(strategy="fsdp"))
    _one_sentence(str(error.value))
    assert "--nproc 2" in str(error.value)
    monkeypatch.setenv("WORLD_SIZE", "2")  # a process torchrun started
    check_distributed(DistributedConfig(strategy="fsdp"))


# --- several nodes ---


def test_the_launch_command_of_node_1_of_2(tmp_path):
    runs = tmp_path / "runs"
    config = load_config(None, ["model.name_or_path=m", f"output.dir={runs}", "output.name=big"])
    node = Launch(nproc=4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400)
    command = launch_command(config, tmp_path / "run.yaml", ["train.seed=3"], None, node)
    assert command == [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", "4", "--nnodes", "2", "--node_rank", "1",
        "--master_addr", "10.0.0.1", "--master_port", "29400",
        "-m", "tunesmith.cli.main", "train", str(tmp_path / "run.yaml"), "train.seed=3",
    ]  # fmt: skip
    assert not runs.exists()  # node 1 leaves the shared run folder to the main node

    main = launch_command(config, None, [], None, Launch(4, 2, 0, "10.0.0.1", 29400))
    assert main[-1] == "output.name=big" and (runs / "big").is_dir()
    assert main[main.index("--node_rank") + 1] == "0"

    unnamed = load_config(None, ["model.name_or_path=m", f"output.dir={runs}"])
    with pytest.raises(ConfigError, match=r"output\.name: a multi-node run needs"):
        launch_command(unnamed, None, [], None, node)
