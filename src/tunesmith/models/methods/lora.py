"""LoRA through PEFT: low-rank updates on the chosen linear layers, with DoRA, rsLoRA,
PiSSA / OLoRA initialisation and LoRA+ (B trains at a higher learning rate)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tunesmith.config.methods import LoraMethod
from tunesmith.models.methods._peft import Task, load, task_type, wrap

__all__ = ["ARTIFACT", "MERGEABLE", "apply", "load", "loraplus_optimizer", "merge", "save"]

ARTIFACT = "adapter"
MERGEABLE = True
_INIT = {
    "default": True,
    "gaussian": "gaussian",
    "pissa": "pissa",
    "pissa_fast": "pissa_niter_16",
    "olora": "olora",
}
# PiSSA / OLoRA move the principal part of W into the adapter; the saved adapter must be
# converted back to a plain LoRA delta on the original W, from the adapter as initialised.
_INITIAL_ADAPTER = "_tunesmith_initial_adapter"


def lora_config(cfg: LoraMethod, task: Task = "causal_lm"):
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type(task),
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        modules_to_save=cfg.modules_to_save or None,  # seq_cls adds the classifier head itself
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        init_lora_weights=_INIT[cfg.init],
    )


def apply(model, cfg: LoraMethod, task: Task = "causal_lm"):
    model = wrap(model, lora_config(cfg, task))
    if cfg.init in ("pissa", "pissa_fast", "olora"):
        initial = tempfile.mkdtemp(prefix="tunesmith-initial-adapter-")
        model.save_pretrained(initial)
        setattr(model, _INITIAL_ADAPTER, initial)
    return model


def save(model, tokenizer, out_dir: Path) -> None:
    initial = getattr(model, _INITIAL_ADAPTER, None)
    # saved as a plain LoRA of rank 2r that applies to the unchanged base model
    model.save_pretrained(out_dir, path_initial_model_for_weight_conversion=initial)
    tokenizer.save_pretrained(out_dir)


def merge(model):
    return model.merge_and_unload()


def loraplus_optimizer(model, optimizer_cls, optimizer_kwargs: dict, ratio: float, weight_decay):
    """LoRA+ (Hayou et al. 2024): B matrices (and 1-D tensors) at lr x ratio, A at lr."""
    from peft.optimizers import create_loraplus_optimizer

    kwargs = dict(optimizer_kwargs)
    lr = kwargs.pop("lr")
    return create_loraplus_optimizer(
        model,
        optimizer_cls,
        lr=lr,
        loraplus_lr_ratio=ratio,
        loraplus_weight_decay=weight_decay,
        **kwargs,
    )
