"""Supervised fine-tuning of a vision-language model: `train.stage: sft` on a model whose config
is an image-text-to-text one (train/sft.py picks this recipe; see docs/architecture.md).

The run is train/recipe.py's. What differs from text SFT: the model loads with its processor
as the tokenizer (models/vlm.py), examples are image + text conversations rendered and masked
by data/multimodal.py, the collator opens each batch's images, and the method applies to the
language model with the vision tower frozen (method.train_vision / train_projector). Batches
are padded, not packed (an image's tokens belong to one row); the speed levers are text-model
transforms and stay off.
"""

from __future__ import annotations

from tunesmith.config.schema import RunConfig
from tunesmith.data.multimodal import VlmCollator, build_vlm_data, vlm_sources
from tunesmith.models.methods import get_method
from tunesmith.models.vlm import load_vlm_and_processor
from tunesmith.runs.folder import RunFolder
from tunesmith.train.arguments import training_arguments
from tunesmith.train.recipe import Data, Job, Loaded, Recipe
from tunesmith.train.trainer import CausalLMTrainer
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError

VLM_METHODS_NOTE = "lora, qlora and full"


def _check(config: RunConfig) -> None:
    method = get_method(config.method.type)
    if not method.vision_language:
        raise ConfigError(
            f"method.type: {config.method.type} is not available for a vision-language model "
            f"({config.model.name_or_path}); use {VLM_METHODS_NOTE}"
        )
    if config.train.forgetting_eval is not None:
        raise ConfigError(
            "train.forgetting_eval: measures a text model's perplexity on general text; not "
            "available for a vision-language model, remove it"
        )
    if config.data.replay is not None:
        raise ConfigError("data.replay: not supported for a vision-language model; remove it")


def _read(job: Job):
    return vlm_sources(job.config.data)


def _load(job: Job, quantization) -> Loaded:
    model, processor, resolved = load_vlm_and_processor(job.config.model, quantization)
    return Loaded(model, processor, resolved.ref)


def _data(job: Job) -> Data:
    config, run, processor = job.config, job.run, job.loaded.tokenizer
    train = build_vlm_data(job.sources, config.data, processor, run.reject)
    held_out = None
    if config.data.eval:
        held_out = build_vlm_data(
            vlm_sources(config.data.model_copy(update={"train": config.data.eval, "dataset": []})),
            config.data,
            processor,
            run.reject,
        )
    return Data(
        train=train.examples,
        eval=held_out.examples if held_out else None,
        stats=train.stats,
        summary={"data": train.stats, "eval_data": held_out.stats if held_out else None},
    )


def _report(data: Data, run: RunFolder) -> None:
    s = data.stats
    console.print(
        f"data: {s['read']} records read, {s['examples']} examples with {s['images']} images "
        f"({s['image_tokens']} image tokens), {s['truncated']} truncated to cutoff_len, "
        f"{s['rejected']} rejected" + (f" (see {run.rejects_path})" if s["rejected"] else "")
    )


def _trainer(job: Job) -> CausalLMTrainer:
    cfg, data = job.config.train, job.data
    args = training_arguments(
        cfg.model_copy(update={"packing": False}), job.run, has_eval=data.eval is not None
    )
    args.remove_unused_columns = False  # the collator reads each row's image paths
    return CausalLMTrainer(
        model=job.model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=VlmCollator(job.loaded.tokenizer),
        l2_to_pretrained=cfg.l2_to_pretrained,
        layerwise_lr_decay=cfg.layerwise_lr_decay,
        loraplus_lr_ratio=getattr(job.config.method, "loraplus_lr_ratio", None),
        fused_loss=cfg.optimize,
    )


VLM = Recipe(
    name="sft",
    read=_read,
    data=_data,
    trainer=_trainer,
    report=_report,
    task="vlm",
    load=_load,
    check=_check,
    example="my_images.json",
)
