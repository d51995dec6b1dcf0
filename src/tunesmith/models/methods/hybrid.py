"""Hybrid PEFT (chapter 3, section 3.2): LoRA on the attention projections for expressiveness,
bottleneck adapters after the FFN for stability, in one model.

The LoRA part is a PEFT adapter (adapter_config.json); the FFN adapters are ours, saved next to
it (see adapter.py). With a `budget`, `allocate_parameters` splits a trainable-parameter budget
2:1 between LoRA and adapters (the seed's 0.6 / 0.3; its prompt share has no part here).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tunesmith.config.methods import HybridMethod
from tunesmith.models.methods import _peft
from tunesmith.models.methods.adapter import (
    NOT_MERGEABLE,
    adapter_targets,
    attach,
    block_activations,
    load_weights,
    remember,
    save_weights,
)
from tunesmith.models.methods.base import Method, Task, read_marker, register
from tunesmith.models.methods.lora import lora_activations


@register
class Hybrid(Method):
    name = "hybrid"
    config = HybridMethod
    not_mergeable = NOT_MERGEABLE  # the LoRA half could merge, the serial adapters cannot
    shares_base = False  # PEFT would switch the LoRA half and leave the FFN adapters out
    learning_rate = 2e-4
    why = "LoRA on attention for expressiveness, FFN adapters for stability, in one model"

    def apply(self, model, cfg: HybridMethod, task: Task = "causal_lm"):
        from peft import LoraConfig

        cfg = sized(cfg, model)
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

    def write(self, model, out_dir: Path) -> None:
        model.save_pretrained(out_dir)  # LoRA weights (and a classifier head)
        save_weights(model, out_dir)

    def load(self, base_model, folder: Path):
        state = read_marker(folder)
        cfg = HybridMethod.model_validate(state["method"])
        model = super().load(base_model, folder)
        attach(model.get_base_model(), cfg, ("ffn",))
        remember(model, cfg, state["task"], heads=[])
        load_weights(model, folder)
        return model

    def frozen_block_activations(self, shapes, cfg: HybridMethod) -> float:
        return lora_activations(shapes, cfg, attention_targets(shapes)) + block_activations(
            shapes, cfg
        )

    def checkpointed_activations(self, shapes, cfg: HybridMethod) -> float:
        return 1.25 * sum(t[0] for t in attention_targets(shapes))


def sized(cfg: HybridMethod, model) -> HybridMethod:
    """The config with r and adapter_size derived from the budget, when one is set."""
    if not cfg.budget:
        return cfg
    r, size = allocate_parameters(cfg.budget, model)
    return cfg.model_copy(update={"r": r, "adapter_size": size, "reduction_factor": None})


def attention_linears(model) -> dict[str, nn.Linear]:
    return {
        f"{site}.{name}": module
        for site, block in adapter_targets(model, ("attention",)).items()
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    }


def attention_targets(shapes) -> list[tuple[int, int, str]]:
    """(in, out, short name) of a Llama block's attention projections (planner)."""
    h, q, kv = shapes.hidden, shapes.q_dim, shapes.kv_dim
    return [(h, q, "q"), (h, kv, "k"), (h, kv, "v"), (q, h, "o")]


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
