"""The TrainingArguments every stage shares (TRL's configs extend TrainingArguments too)."""

from __future__ import annotations

import json
import os

import torch

from tunesmith.config.schema import RunConfig, TrainConfig
from tunesmith.runs.folder import RunFolder
from tunesmith.train.callbacks import schedule_arguments
from tunesmith.train.distributed import distributed_arguments
from tunesmith.train.tracking import tracking_arguments
from tunesmith.utils.errors import ConfigError


def training_arguments(cfg: TrainConfig, run: RunFolder, has_eval: bool):
    """transformers' TrainingArguments for a causal-LM stage on CausalLMTrainer."""
    from transformers import TrainingArguments

    kwargs = trainer_kwargs(cfg, run, has_eval)
    if cfg.packing:  # packed rows hold no padding: every token counts
        kwargs["include_num_input_tokens_seen"] = "all"
    return TrainingArguments(
        **kwargs,
        train_sampling_strategy=cfg.sampler,
        prediction_loss_only=True,  # eval reports the loss; logits are kept for trained tokens only
    )


def trainer_kwargs(cfg: TrainConfig, run: RunFolder, has_eval: bool) -> dict:
    """Keyword arguments of TrainingArguments and of every TRL config."""
    bf16, fp16 = precision_flags(cfg.precision)
    return dict(
        output_dir=str(run.checkpoints),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        **schedule_arguments(cfg),  # lr schedule, early stopping, best checkpoint
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bf16,
        fp16=fp16,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.save_steps if has_eval else None,
        use_cpu=not torch.cuda.is_available(),
        **distributed_arguments(cfg, run),  # DDP backend, FSDP or DeepSpeed
        **tracking_arguments(cfg, run),  # train.report_to, offline into RUN/tracking
        disable_tqdm=False,
        dataloader_num_workers=0,
        # tokens/s in metrics.jsonl; the default "no" leaves it at 0
        include_num_input_tokens_seen="non_padding",
    )


def trl_arguments(cfg: TrainConfig, run: RunFolder, has_eval: bool, cutoff_len: int) -> dict:
    """Keyword arguments of the TRL configs: the shared ones and the sequence length."""
    return dict(
        **trainer_kwargs(cfg, run, has_eval),
        max_length=cutoff_len,
        # TRL turns it on by default; train.gradient_checkpointing is set on the model by
        # train/recipe.py, as for every stage (activation_: transformers 5's name for it, which
        # the deprecated gradient_checkpointing then mirrors)
        activation_checkpointing=False,
    )


def cpu_autocast(cfg: TrainConfig) -> bool:
    """bf16 mixed precision on the CPU: the Trainer's autocast does the work there, and the
    float32 speed kernels (models/speed.py) would step around it."""
    return precision_flags(cfg.precision)[0] and not torch.cuda.is_available()


def settle_precision(
    config: RunConfig,
    model,
    tokenizer,
    run: RunFolder,
    resume: bool,
    task: str = "causal_lm",
    speed: bool = True,
) -> tuple[RunConfig, dict]:
    """train.precision as this run trains it (models/precision.py: on the CPU `auto` is bf16
    autocast where a probe finds it faster and the loss holds, else fp32), printed in one line
    and kept in RUN/precision.json; a resumed run takes the choice of the run it resumes, so
    that it computes as the interrupted one did. Returns the config with `auto` replaced by
    the choice on the CPU (the trainer's own rule decides on CUDA) and the choice's record.
    `speed`: the stage runs the fp32 kernels of models/speed.py under train.optimize."""
    from tunesmith.models.precision import Choice, choose
    from tunesmith.utils.console import console

    cfg = config.train
    path = run.root / "precision.json"
    if resume and cfg.precision == "auto" and path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        choice = Choice(**recorded)
        choice.reason = f"as the interrupted run chose: {recorded['reason']}"
    else:
        tokens = cfg.batch_size * config.data.cutoff_len
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        choice = choose(
            model, tokenizer, cfg.precision, tokens, cfg.optimize and speed, task, processes
        )
    console.print(choice.line())
    run.write_json("precision.json", choice.as_dict())
    if cfg.precision == "auto" and not torch.cuda.is_available():
        train = cfg.model_copy(update={"precision": choice.precision})
        config = config.model_copy(update={"train": train})
    return config, choice.as_dict()


def precision_flags(name: str) -> tuple[bool, bool]:
    """(bf16, fp16) flags for the trainer; `auto` on the CPU is fp32 here (settle_precision
    replaces it with the probe's choice before the trainer is built)."""
    cuda = torch.cuda.is_available()
    if name == "auto":
        return cuda and torch.cuda.is_bf16_supported(), False
    if name == "fp16" and not cuda:
        raise ConfigError(
            "train.precision: fp16 mixed precision needs a CUDA GPU; use fp32 or bf16"
        )
    return name == "bf16", name == "fp16"
