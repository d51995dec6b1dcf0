"""IA3 through PEFT: learned vectors that rescale keys, values and the FFN input."""

from __future__ import annotations

from tunesmith.config.methods import IA3Method
from tunesmith.models.methods._peft import task_type, wrap
from tunesmith.models.methods.base import Method, Task, register


@register
class IA3(Method):
    name = "ia3"
    config = IA3Method
    peft_type = "IA3"  # a per-channel scale folds into the weight: mergeable
    learning_rate = 3e-3
    why = "IA3 trains only scaling vectors: tiny memory and artifacts, weaker adaptation"

    def apply(self, model, cfg: IA3Method, task: Task = "causal_lm"):
        from peft import IA3Config

        config = IA3Config(
            task_type=task_type(task),
            target_modules=cfg.target_modules,
            feedforward_modules=cfg.feedforward_modules,
        )
        return wrap(model, config)

    def frozen_block_activations(self, shapes, cfg: IA3Method) -> float:
        return 2 * shapes.kv_dim + 1.25 * shapes.intermediate  # scaled k, v; scaled FFN input
