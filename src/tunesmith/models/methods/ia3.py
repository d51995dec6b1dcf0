"""IA3 through PEFT: learned vectors that rescale keys, values and the FFN input."""

from __future__ import annotations

from tunesmith.config.methods import IA3Method
from tunesmith.models.methods._peft import Task, load, save, task_type, wrap

__all__ = ["ARTIFACT", "MERGEABLE", "apply", "load", "merge", "save"]

ARTIFACT = "adapter"
MERGEABLE = True  # a per-channel scale folds into the weight


def apply(model, cfg: IA3Method, task: Task = "causal_lm"):
    from peft import IA3Config

    config = IA3Config(
        task_type=task_type(task),
        target_modules=cfg.target_modules,
        feedforward_modules=cfg.feedforward_modules,
    )
    return wrap(model, config)


def merge(model):
    return model.merge_and_unload()
