"""Fine-tuning methods. Each module has the same verbs: apply, save, load (and merge if it can).

`apply(model, cfg, task)` makes the chosen parameters trainable and returns the model to train
(task: "causal_lm" or "seq_cls"; for seq_cls the classifier head trains and is saved too);
`save(model, tokenizer, out_dir)` writes what inference needs; `load(base_model, folder)`
rebuilds the tuned model from the base and that folder (a full model folder loads like any
local model); `merge` folds an adapter into the base weights where `MERGEABLE` says it can.
`ARTIFACT` names the run sub-folder; `PACKING = False` marks methods whose virtual tokens
cannot share a packed row (prefix, prompt, ptuning).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from tunesmith.models.methods import (
    adapter,
    freeze,
    full,
    hybrid,
    ia3,
    lora,
    prefix,
    prompt,
    ptuning,
    qlora,
)
from tunesmith.models.methods._peft import HEADS, virtual_tokens

__all__ = [
    "HEADS",
    "METHODS",
    "count_parameters",
    "get_method",
    "load_adapter",
    "quantization_config",
    "supports_packing",
    "virtual_tokens",
]

METHODS: dict[str, ModuleType] = {
    "full": full,
    "freeze": freeze,
    "lora": lora,
    "qlora": qlora,
    "ia3": ia3,
    "prefix": prefix,
    "prompt": prompt,
    "ptuning": ptuning,
    "adapter": adapter,
    "hybrid": hybrid,
}


def get_method(name: str) -> ModuleType:
    return METHODS[name]


def supports_packing(name: str) -> bool:
    return getattr(METHODS[name], "PACKING", True)


def quantization_config(method_cfg) -> object | None:
    """What the base model must be loaded with for this method (qlora: 4/8-bit); else None."""
    return qlora.quantization_config(method_cfg) if method_cfg.type == "qlora" else None


def load_adapter(base_model, folder: Path):
    """Any adapter folder onto its base: ours (adapter, hybrid) by their marker, PEFT's by
    adapter_config.json (PEFT reads the adapter type itself)."""
    import json

    marker = Path(folder) / adapter.MARKER
    if marker.is_file():
        kind = json.loads(marker.read_text(encoding="utf-8"))["method"]["type"]
        return METHODS[kind].load(base_model, folder)
    return lora.load(base_model, folder)


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
