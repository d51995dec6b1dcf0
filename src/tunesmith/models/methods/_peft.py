"""What the PEFT-backed methods share: the task type, the classifier head names, virtual tokens."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from tunesmith.models.methods.base import Task

# A classifier head is new and random: it must train and be saved with the adapter.
HEADS = ("classifier", "score")


def task_type(task: Task):
    from peft import TaskType

    # a vision-language model generates text: PEFT wraps it as a causal LM
    types = {"causal_lm": TaskType.CAUSAL_LM, "seq_cls": TaskType.SEQ_CLS}
    types["vlm"] = TaskType.CAUSAL_LM
    if task not in types:
        raise ValueError(f"task must be one of {sorted(types)}, got {task!r}")
    return types[task]


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """PEFT asks every model it wraps for `is_gradient_checkpointing`, which transformers 5
    deprecated (a FutureWarning on each wrap and load): the question is PEFT's, not the user's,
    and the answer is the same (`is_activation_checkpointing`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def wrap(model, peft_config):
    from peft import get_peft_model

    with peft_quietly():
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
