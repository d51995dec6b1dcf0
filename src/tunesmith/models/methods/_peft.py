"""What the PEFT-backed methods share: the task type, the classifier head names, virtual tokens."""

from __future__ import annotations

from tunesmith.models.methods.base import Task

# A classifier head is new and random: it must train and be saved with the adapter.
HEADS = ("classifier", "score")


def task_type(task: Task):
    from peft import TaskType

    types = {"causal_lm": TaskType.CAUSAL_LM, "seq_cls": TaskType.SEQ_CLS}
    if task not in types:
        raise ValueError(f"task must be one of {sorted(types)}, got {task!r}")
    return types[task]


def wrap(model, peft_config):
    from peft import get_peft_model

    return get_peft_model(model, peft_config)


def virtual_tokens(model) -> int:
    """Positions a prompt-learning model puts in front of the input: its logits come first.

    Prompt tuning and P-tuning prepend them to the sequence; prefix tuning keeps them in the KV
    cache (none in the sequence); every other method adds none.
    """
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning:
        return 0
    from peft import PeftType

    return 0 if config.peft_type == PeftType.PREFIX_TUNING else config.num_virtual_tokens
