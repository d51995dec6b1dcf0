"""Supervised fine-tuning, read top to bottom: data, model, method, trainer, save.

`train_causal_lm` is the run every causal-LM stage shares; a `Stage` says what differs (the
data it reads and how it tokenizes it). Continued pre-training (train/pt.py) is the other one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config.schema import DataConfig, RunConfig, TrainConfig
from tunesmith.data.dataset import PackedCollator, RejectSink, SFTCollator, SFTData, build_sft_data
from tunesmith.data.registry import sft_sources
from tunesmith.models.load import load_model_and_tokenizer
from tunesmith.models.methods import count_parameters, get_method
from tunesmith.plan import plan_summary
from tunesmith.runs.folder import RunFolder, is_main_process
from tunesmith.train.callbacks import (
    CompactProgressCallback,
    MetricsCallback,
    best_checkpoint,
    check_eval_needs,
    early_stopping_callbacks,
    resume_checkpoint,
    schedule_arguments,
)
from tunesmith.train.distributed import check_distributed, distributed_arguments
from tunesmith.train.forgetting import add_replay, replay_sources
from tunesmith.train.forgetting_check import ForgettingCheck
from tunesmith.train.monitor import TrainingMonitor
from tunesmith.train.speed import matmul_kernel, optimize_for_training
from tunesmith.train.trainer import CausalLMTrainer
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, DataError


@dataclass
class TrainResult:
    run: RunFolder
    artifact: Path  # adapter/ or model/ folder
    summary: dict


@dataclass(frozen=True)
class Stage:
    """What a causal-LM stage reads and how; model, method, trainer and saving are shared."""

    name: str  # the train.stage value
    sources: Callable[[DataConfig], list]  # called before the model loads: mistakes surface early
    # (sources or data.eval files, config, tokenizer, reject sink) -> tokenized examples
    build: Callable[[list, RunConfig, object, RejectSink], SFTData]
    report: Callable[[dict, RunFolder], None]  # one console line about the data


def run_sft(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    return train_causal_lm(SFT, config, run, resume)


def train_causal_lm(
    stage: Stage, config: RunConfig, run: RunFolder, resume: bool = False
) -> TrainResult:
    from transformers import set_seed
    from transformers.trainer_callback import ProgressCallback

    if config.train.stage != stage.name:
        raise ConfigError(
            f"train.stage: '{config.train.stage}' given to the {stage.name} stage; "
            "run it with tunesmith.train.run_stage"
        )
    if not config.data.train and not config.data.dataset:
        raise ConfigError("data.train: no training files given (e.g. data.train=[my_data.jsonl])")
    sources = stage.sources(config.data)  # registry mistakes surface before the model loads
    replay = replay_sources(config.data)
    check_eval_needs(config.train, has_eval=bool(config.data.eval))
    check_distributed(config.train.distributed)
    method = get_method(config.method.type)
    if config.train.packing and not method.packing:
        console.print(
            f"[yellow]method {config.method.type}: its virtual tokens cannot be shared by the "
            "examples of a packed row; train.packing is turned off"
        )
        unpacked = config.train.model_copy(update={"packing": False})
        config = config.model_copy(update={"train": unpacked})
    started = time.perf_counter()
    run.save_config(config)
    run.clear_rejects()  # the data is read again on every start or resume
    forgetting = _forgetting_check(config.train, run)
    set_seed(config.train.seed)

    quantization = method.quantization_config(config.method)  # qlora: a 4/8-bit base
    model, tokenizer, resolved = load_model_and_tokenizer(config.model, quantization)
    train_data = stage.build(sources, config, tokenizer, run.reject)
    train_data = add_replay(
        train_data, replay, config.data, config.train.seed, tokenizer, run.reject
    )
    eval_data = (
        stage.build(config.data.eval, config, tokenizer, run.reject) if config.data.eval else None
    )
    stage.report(train_data.stats, run)
    require_examples(train_data, run)
    if forgetting:
        forgetting.before(model, tokenizer)  # the base model: no method applied, no step taken

    model = method.apply(model, config.method, task="causal_lm")
    trainable, total = count_parameters(model)
    console.print(
        f"method {config.method.type}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%)"
    )
    console.print(plan_summary(config))  # the planner's memory estimate for this run
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # checkpointed blocks need a grad through frozen inputs
    if config.train.optimize:
        pin_matmul_kernel(run, resume)
    model = optimize_for_training(model, config.train.optimize, config.train.compile)

    collator = PackedCollator() if config.train.packing else SFTCollator(tokenizer.pad_token_id)
    monitor = TrainingMonitor(config.train.monitor, run)
    # the monitor first: it puts NaN losses back into the logs the metrics callback writes
    callbacks = [monitor, MetricsCallback(run, config.train.monitor.plot_every)]
    trainer = CausalLMTrainer(
        model=model,
        args=training_arguments(config.train, run, has_eval=eval_data is not None),
        train_dataset=train_data.examples,
        eval_dataset=eval_data.examples if eval_data else None,
        data_collator=collator,
        callbacks=callbacks + early_stopping_callbacks(config.train) + method.callbacks(model),
        l2_to_pretrained=config.train.l2_to_pretrained,
        layerwise_lr_decay=config.train.layerwise_lr_decay,
        loraplus_lr_ratio=getattr(config.method, "loraplus_lr_ratio", None),
        fused_loss=config.train.optimize,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(CompactProgressCallback)
    checkpoint = resume_checkpoint(run, resume)
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    artifact = run.root / method.artifact
    if is_main_process():  # the best checkpoint's with early stopping
        method.save(trainer.model, tokenizer, artifact, config.method, "causal_lm")
    summary = {
        **run_summary(config, resolved.ref, (trainable, total), output, checkpoint, started),
        "data": train_data.stats,
        "eval_data": eval_data.stats if eval_data else None,
        "best": best_checkpoint(config.train, trainer.state),
        **monitor.summary(),
        "forgetting": forgetting.after(trainer.model, tokenizer) if forgetting else None,
    }
    run.write_json("summary.json", summary)
    status = "stopped" if monitor.stopped_by else "done"
    run.add_to_index(stage=stage.name, method=config.method.type, model=resolved.ref, status=status)
    if is_main_process():
        console.print(
            f"saved {artifact}  (loss {output.training_loss:.4f}, {summary['seconds']} s)"
        )
    return TrainResult(run, artifact, summary)


def pin_matmul_kernel(run: RunFolder, resume: bool) -> str:
    """The matmul kernel is timed per process (train/speed.py): a resumed run takes the one the
    interrupted run chose, recorded in speed.json, so that its losses stay bit for bit the same."""
    path = run.root / "speed.json"
    recorded = json.loads(path.read_text()) if resume and path.is_file() else {}
    kernel = matmul_kernel(recorded.get("matmul_kernel"))
    run.write_json("speed.json", {"matmul_kernel": kernel})
    return kernel


def _forgetting_check(cfg: TrainConfig, run: RunFolder) -> ForgettingCheck | None:
    return ForgettingCheck(cfg.forgetting_eval, run.reject) if cfg.forgetting_eval else None


def training_arguments(cfg: TrainConfig, run: RunFolder, has_eval: bool):
    from transformers import TrainingArguments

    return TrainingArguments(
        **trainer_kwargs(cfg, run, has_eval),
        train_sampling_strategy=cfg.sampling,
        # packed rows hold no padding; padded batches are counted by their attention mask
        include_num_input_tokens_seen="all" if cfg.packing else "non_padding",
        prediction_loss_only=True,  # eval reports the loss; logits are kept for trained tokens only
    )


def trainer_kwargs(cfg: TrainConfig, run: RunFolder, has_eval: bool) -> dict:
    """The TrainingArguments every stage shares (TRL's configs extend TrainingArguments too)."""
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
        **distributed_arguments(cfg.distributed),  # DDP backend, FSDP or DeepSpeed
        report_to=[],
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def precision_flags(name: str) -> tuple[bool, bool]:
    """(bf16, fp16) flags for the trainer."""
    cuda = torch.cuda.is_available()
    if name == "auto":
        return cuda and torch.cuda.is_bf16_supported(), False
    if name == "fp16" and not cuda:
        raise ConfigError(
            "train.precision: fp16 mixed precision needs a CUDA GPU; use fp32 or bf16"
        )
    return name == "bf16", name == "fp16"


def report_data(stats: dict, run: RunFolder) -> None:
    console.print(
        f"data: {stats['read']} records read, {stats['examples']} examples, "
        f"{stats['truncated']} truncated to cutoff_len, {stats['rejected']} rejected"
        + (f" (see {run.rejects_path})" if stats["rejected"] else "")
    )


def run_summary(
    config: RunConfig, model_ref: str, counts: tuple[int, int], output, checkpoint, started: float
) -> dict:
    """The summary.json fields every stage writes; each adds its own after them."""
    trainable, total = counts
    return {
        "model": model_ref,
        "stage": config.train.stage,
        "method": config.method.type,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_loss": output.training_loss,
        "steps": output.global_step,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def require_examples(data: SFTData, run: RunFolder) -> None:
    """Stop with a sentence, not a sampler traceback, when no training example is left."""
    if not data.examples:
        raise DataError(
            f"data.train: no training examples left of {data.stats['read']} records read; "
            f"the reason for each rejected record is in {run.rejects_path}"
        )


SFT = Stage(
    "sft",
    sft_sources,
    lambda sources, config, tokenizer, reject: build_sft_data(
        sources, config.data, tokenizer, reject
    ),
    report_data,
)
