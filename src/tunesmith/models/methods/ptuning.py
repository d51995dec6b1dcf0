"""P-tuning through PEFT: a soft prompt produced by a small MLP or LSTM encoder.

Like prompt tuning, the virtual tokens are prepended to the sequence; packing is turned off.
(P-tuning v2, deep prompts at every layer, is `prefix` without projection.)
"""

from __future__ import annotations

from tunesmith.config.methods import PTuningMethod
from tunesmith.models.methods._peft import task_type, wrap
from tunesmith.models.methods.base import Task, keep_in_checkpoints, register
from tunesmith.models.methods.prefix import PromptLearning


@register
class PTuning(PromptLearning):
    name = "ptuning"
    config = PTuningMethod
    peft_type = "P_TUNING"
    learning_rate = 1e-2
    why = "P-tuning learns a soft prompt through a small encoder: tiny, no merge"

    def apply(self, model, cfg: PTuningMethod, task: Task = "causal_lm"):
        from peft import PromptEncoderConfig, PromptEncoderReparameterizationType

        encoder = {"mlp": "MLP", "lstm": "LSTM"}[cfg.encoder]
        config = PromptEncoderConfig(
            task_type=task_type(task),
            num_virtual_tokens=cfg.num_virtual_tokens,
            encoder_reparameterization_type=PromptEncoderReparameterizationType[encoder],
            encoder_hidden_size=cfg.encoder_hidden_size or model.config.hidden_size,
        )
        model = wrap(model, config)
        keep_in_checkpoints(model, ".prompt_encoder.")  # PEFT saves the encoder's output only
        return model
