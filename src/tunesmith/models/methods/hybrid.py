"""Hybrid PEFT (chapter 3, section 3.2): LoRA on the attention projections for expressiveness,
bottleneck adapters after the FFN for stability, in one model.

The LoRA part is a PEFT adapter (adapter_config.json); the FFN adapters are ours, saved next to
it (see adapter.py). With a `budget`, `allocate_parameters` splits a trainable-parameter budget
2:1 between LoRA and adapters (the seed's 0.6 / 0.3; its prompt share has no part here).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from tunesmith.config.methods import HybridMethod
from tunesmith.models.methods import _peft
from tunesmith.models.methods.adapter import (
    MARKER,
    adapter_targets,
    attach,
    load_weights,
    remember,
    save_weights,
)
from tunesmith.utils.errors import ModelError

__all__ = ["ARTIFACT", "MERGEABLE", "allocate_parameters", "apply", "load", "merge", "save"]

ARTIFACT = "adapter"
MERGEABLE = False  # the LoRA half could merge, the serial adapters cannot


def apply(model, cfg: HybridMethod, task: _peft.Task = "causal_lm"):
    from peft import LoraConfig

    if cfg.budget:
        r, size = allocate_parameters(cfg.budget, model)
        cfg = cfg.model_copy(update={"r": r, "adapter_size": size, "reduction_factor": None})
    lora = LoraConfig(
        task_type=_peft.task_type(task),  # seq_cls: PEFT trains and saves the head
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(attention_linears(model)),
    )
    model = _peft.wrap(model, lora)
    attach(model.get_base_model(), cfg, ("ffn",))  # after wrapping: PEFT would freeze them
    remember(model, cfg, task, heads=[])
    return model


def attention_linears(model) -> dict[str, nn.Linear]:
    return {
        f"{site}.{name}": module
        for site, block in adapter_targets(model, ("attention",)).items()
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    }


def allocate_parameters(budget: int, model) -> tuple[int, int]:
    """(LoRA rank, adapter size) spending about 2/3 of `budget` parameters on LoRA and 1/3 on
    the FFN adapters; at least 1 each."""
    per_rank = sum(m.in_features + m.out_features for m in attention_linears(model).values())
    hidden = model.config.hidden_size
    adapters = len(adapter_targets(model, ("ffn",)))
    # an adapter of size s: down (h x s + s) and up (s x h + h)
    per_size = adapters * (2 * hidden + 1)
    rank = max(1, (budget * 2 // 3) // per_rank)
    size = max(1, (budget // 3 - adapters * hidden) // per_size)
    return rank, size


def save(model, tokenizer, out_dir: Path) -> None:
    model.save_pretrained(out_dir)  # LoRA weights (and a classifier head)
    save_weights(model, out_dir)
    tokenizer.save_pretrained(out_dir)


def load(base_model, folder: Path):
    folder = Path(folder)
    state = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    cfg = HybridMethod.model_validate(state["method"])
    model = _peft.load(base_model, folder)
    attach(model.get_base_model(), cfg, ("ffn",))
    remember(model, cfg, state["task"], heads=[])
    load_weights(model, folder)
    return model


def merge(model):
    raise ModelError(
        "method hybrid: its FFN adapters are serial (down, activation, up) and cannot be merged "
        "into the base weights; export the model with its adapters, or train lora"
    )
