"""P-tuning through PEFT: a soft prompt produced by a small MLP or LSTM encoder.

Like prompt tuning, the virtual tokens are prepended to the sequence; packing is turned off.
(P-tuning v2, deep prompts at every layer, is `prefix` without projection.)
"""

from __future__ import annotations

from tunesmith.config.methods import PTuningMethod
from tunesmith.models.methods._peft import Task, load, save, task_type, wrap

__all__ = ["ARTIFACT", "MERGEABLE", "PACKING", "apply", "load", "save"]

ARTIFACT = "adapter"
MERGEABLE = False
PACKING = False


def apply(model, cfg: PTuningMethod, task: Task = "causal_lm"):
    from peft import PromptEncoderConfig, PromptEncoderReparameterizationType

    encoder = {"mlp": "MLP", "lstm": "LSTM"}[cfg.encoder]
    config = PromptEncoderConfig(
        task_type=task_type(task),
        num_virtual_tokens=cfg.num_virtual_tokens,
        encoder_reparameterization_type=PromptEncoderReparameterizationType[encoder],
        encoder_hidden_size=cfg.encoder_hidden_size or model.config.hidden_size,
    )
    return wrap(model, config)
