"""Full fine-tuning: every parameter is trained; the whole model is saved."""

from __future__ import annotations

from pathlib import Path

from tunesmith.config.methods import FullMethod
from tunesmith.models.methods.base import Method, Task, register
from tunesmith.utils.errors import ModelError


@register
class Full(Method):
    name = "full"
    config = FullMethod
    artifact = "model"
    shares_base = False
    trains_base_weights = True
    vision_language = True
    learning_rate = 2e-5  # moves pretrained weights: small steps
    why = (
        "full fine-tuning gives the best quality when the data is large enough to move every "
        "weight without overfitting"
    )

    def apply(self, model, cfg: FullMethod, task: Task = "causal_lm"):
        for param in model.parameters():
            param.requires_grad_(True)
        if task == "vlm":  # the vision tower and projector as method.train_* say
            from tunesmith.models.vlm import freeze_vision

            freeze_vision(model, cfg)
        return model

    def write(self, model, out_dir: Path) -> None:
        model.save_pretrained(out_dir)

    def load(self, base_model, folder: Path):
        raise ModelError(f"{folder}: a whole model; load it as the model, not onto a base")

    def merge(self, model):
        return model  # already a whole model: nothing to fold in

    def advised(self, scale: str, layers: int, parameters: int) -> dict:
        return {"train.learning_rate": 1e-5} if parameters > 10e9 else {}  # gentler on giants

    def trained_blocks(self, cfg, layers: int) -> int:
        return layers
