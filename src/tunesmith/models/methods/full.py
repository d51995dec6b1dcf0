"""Full fine-tuning: every parameter is trained; the whole model is saved."""

from __future__ import annotations

from pathlib import Path

from tunesmith.config.methods import FullMethod

ARTIFACT = "model"  # sub-folder of the run folder
MERGEABLE = False  # nothing to merge: the artifact is already a whole model


def apply(model, cfg: FullMethod, task: str = "causal_lm"):
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def save(model, tokenizer, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
