"""LoRA through PEFT: low-rank updates on the chosen linear layers."""

from __future__ import annotations

from pathlib import Path

from tunesmith.config.methods import LoraMethod

ARTIFACT = "adapter"


def apply(model, cfg: LoraMethod):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        modules_to_save=cfg.modules_to_save or None,
    )
    return get_peft_model(model, config)


def save(model, tokenizer, out_dir: Path) -> None:
    model.save_pretrained(out_dir)  # adapter weights only
    tokenizer.save_pretrained(out_dir)


def load(base_model, folder: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, folder)


def merge(model):
    return model.merge_and_unload()
