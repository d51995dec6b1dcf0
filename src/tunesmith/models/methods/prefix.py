"""Prefix tuning through PEFT: trained keys and values in front of every attention layer.

Without projection this is P-tuning v2 (deep prompts); with it, the prefix comes out of an MLP
(Li & Liang 2021). The prefix sits in the KV cache, not in the sequence: logits keep their
positions. Packed rows cannot share one prefix per example, so packing is turned off.
"""

from __future__ import annotations

from tunesmith.config.methods import PrefixMethod
from tunesmith.models.methods._peft import Task, load, save, task_type, wrap

__all__ = ["ARTIFACT", "MERGEABLE", "PACKING", "apply", "load", "save"]

ARTIFACT = "adapter"
MERGEABLE = False  # attention over extra keys is not a change of any weight
PACKING = False


def apply(model, cfg: PrefixMethod, task: Task = "causal_lm"):
    from peft import PrefixTuningConfig

    config = PrefixTuningConfig(
        task_type=task_type(task),
        num_virtual_tokens=cfg.num_virtual_tokens,
        prefix_projection=cfg.projection,
        encoder_hidden_size=cfg.encoder_hidden_size or model.config.hidden_size,
    )
    return wrap(model, config)
