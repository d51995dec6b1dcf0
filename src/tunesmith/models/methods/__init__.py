"""Fine-tuning methods. Each module has the same verbs: apply, save, load (and merge if it can).

`apply(model, cfg)` makes the chosen parameters trainable and returns the model to train;
`save(model, tokenizer, run)` writes what inference needs into the run folder;
`load(base_model, folder)` rebuilds an adapter model from the base and that folder (a full
model folder loads like any local model); `merge` folds an adapter into the base weights.
"""

from __future__ import annotations

from types import ModuleType

from tunesmith.models.methods import freeze, full, lora

METHODS: dict[str, ModuleType] = {"full": full, "freeze": freeze, "lora": lora}


def get_method(name: str) -> ModuleType:
    return METHODS[name]


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total
