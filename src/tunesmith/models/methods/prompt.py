"""Prompt tuning through PEFT: trained embeddings prepended to every input.

The virtual tokens are part of the sequence: the model returns logits for them first
(`_peft.virtual_tokens` says how many), and packed rows would give them to the first example only,
so packing is turned off.
"""

from __future__ import annotations

from tunesmith.config.methods import PromptMethod
from tunesmith.models.methods._peft import task_type, wrap
from tunesmith.models.methods.base import Task, register
from tunesmith.models.methods.prefix import PromptLearning
from tunesmith.utils.errors import ModelError


@register
class Prompt(PromptLearning):
    name = "prompt"
    config = PromptMethod
    peft_type = "PROMPT_TUNING"
    learning_rate = 3e-2
    why = "prompt tuning trains only a few embeddings: the least memory, the weakest adaptation"

    def apply(self, model, cfg: PromptMethod, task: Task = "causal_lm"):
        from peft import PromptTuningConfig, PromptTuningInit

        text = {}
        if cfg.init_text:
            # PEFT tokenizes the text with the model's own tokenizer, read from its folder
            text = {
                "prompt_tuning_init": PromptTuningInit.TEXT,
                "prompt_tuning_init_text": cfg.init_text,
                "tokenizer_name_or_path": model.name_or_path,
            }
        config = PromptTuningConfig(
            task_type=task_type(task), num_virtual_tokens=cfg.num_virtual_tokens, **text
        )
        try:
            return wrap(model, config)
        except OSError as exc:
            raise ModelError(
                f"method.init_text: cannot read the tokenizer of '{model.name_or_path}' to "
                f"embed the text ({exc}); drop init_text for a random start"
            ) from None

    def countable(self, cfg: PromptMethod) -> PromptMethod:
        return cfg.model_copy(update={"init_text": None})  # same shapes, no tokenizer read
