"""Prefix tuning through PEFT: trained keys and values in front of every attention layer.

Without projection this is P-tuning v2 (deep prompts); with it, the prefix comes out of an MLP
(Li & Liang 2021). The prefix sits in the KV cache, not in the sequence: logits keep their
positions. Packed rows cannot share one prefix per example, so packing is turned off.
"""

from __future__ import annotations

import inspect

from tunesmith.config.methods import PrefixMethod
from tunesmith.models.methods._peft import task_type, wrap
from tunesmith.models.methods.base import Method, Task, keep_in_checkpoints, register
from tunesmith.utils.errors import ModelError

NOT_MERGEABLE_PROMPT = (
    "its virtual tokens are inputs, not a change of any weight, so it cannot be merged; the "
    "export keeps base/ and adapter/ apart"
)


class PromptLearning(Method):
    """What prefix, prompt and P-tuning share: virtual tokens, which packed rows cannot share
    and which no weight merge can express."""

    packing = False
    not_mergeable = NOT_MERGEABLE_PROMPT


@register
class Prefix(PromptLearning):
    name = "prefix"
    config = PrefixMethod
    peft_type = "PREFIX_TUNING"  # attention over extra keys: no weight changes
    learning_rate = 1e-2
    why = "prefix tuning trains keys and values in front of every layer: tiny, no merge"

    def apply(self, model, cfg: PrefixMethod, task: Task = "causal_lm"):
        from peft import PrefixTuningConfig

        if task == "seq_cls":
            check_classifier_takes_prefix(model)
        config = PrefixTuningConfig(
            task_type=task_type(task),
            num_virtual_tokens=cfg.num_virtual_tokens,
            prefix_projection=cfg.projection,
            encoder_hidden_size=cfg.encoder_hidden_size or model.config.hidden_size,
        )
        model = wrap(model, config)
        if cfg.projection:  # PEFT saves the projected prefix, not the projection
            keep_in_checkpoints(model, ".prompt_encoder.")
        return model


def check_classifier_takes_prefix(model) -> None:
    """PEFT's classification wrapper hands the prefix over as `past_key_values` to the model or,
    failing that, its backbone, and raises at the first forward if neither names it; models of
    transformers 5 call that argument `cache`. Say so now, before any data is read."""
    from transformers import PreTrainedModel

    backbone = next((m for m in model.children() if isinstance(m, PreTrainedModel)), model)
    if any("past_key_values" in inspect.signature(m.forward).parameters for m in (model, backbone)):
        return
    raise ModelError(
        f"method prefix: PEFT's prefix tuning for classification needs a model whose forward "
        f"takes past_key_values, and {type(model).__name__} takes none; for task seq_cls use "
        f"prompt, lora, ia3 or adapter instead"
    )
