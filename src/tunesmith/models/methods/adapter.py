"""Bottleneck adapters (Houlsby et al. 2019): h + up(act(down(h))) after attention and/or FFN.

Our own small module: the `adapters` library pins transformers 4.x. Each adapter is a child of
the block it follows (`<block>.self_attn.bottleneck_adapter`), called by a forward hook on that
block, so the base model's own parameter names stay unchanged. `up` starts at zero: the adapted
model starts as the base model. Adapters are serial (a nonlinearity between down and up), so
they cannot be merged into the base weights: inference keeps them, at a small latency cost.

The artifact: `bottleneck_adapters.safetensors` (adapter and classifier-head weights) and the
method marker (the config, the task and the heads saved with the adapters), next to the
tokenizer.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from tunesmith.config.methods import AdapterMethod, HybridMethod
from tunesmith.models.methods._peft import HEADS
from tunesmith.models.methods.base import Method, Task, keep_in_checkpoints, read_marker, register
from tunesmith.utils.errors import ModelError

WEIGHTS = "bottleneck_adapters.safetensors"
NAME = "bottleneck_adapter"
_STATE = "_tunesmith_adapter"  # model attribute: the config, task and heads (for the marker)
_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.\d+$")
# Child names of a block, first match wins: Llama/Qwen/Mistral, BERT, GPT-2, others.
SITES = {
    "attention": ("self_attn", "attention", "attn", "self_attention"),
    "ffn": ("mlp", "output", "feed_forward", "ffn"),
}
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
ADAPTER_H = 2.5  # an adapter's input, output and residual sum, in hidden widths (RSS, planner)
NOT_MERGEABLE = (
    "its bottleneck adapters are serial (down, activation, up) and cannot be merged into the "
    "base weights; export the model with its adapters, or train lora"
)


@register
class Adapter(Method):
    name = "adapter"
    config = AdapterMethod
    not_mergeable = NOT_MERGEABLE
    shares_base = False  # our own modules: PEFT cannot switch them per request
    learning_rate = 1e-4
    why = "bottleneck adapters are stable and modular, at a small inference cost"

    def apply(self, model, cfg: AdapterMethod, task: Task = "causal_lm"):
        for param in model.parameters():
            param.requires_grad_(False)
        attach(model, cfg, sites(cfg))
        heads = train_heads(model) if task == "seq_cls" else []
        remember(model, cfg, task, heads)
        return model

    def write(self, model, out_dir: Path) -> None:
        save_weights(model, out_dir)

    def marker_fields(self, model) -> dict:
        return {"heads": getattr(model, _STATE)["heads"]}

    def load(self, base_model, folder: Path):
        """The base model with the saved adapters attached (and head weights loaded)."""
        state = read_marker(folder)
        model = self.apply(base_model, AdapterMethod.model_validate(state["method"]), state["task"])
        load_weights(model, folder)
        return model

    def frozen_block_activations(self, shapes, cfg: AdapterMethod) -> float:
        return len(sites(cfg)) * block_activations(shapes, cfg)


def sites(cfg: AdapterMethod) -> tuple[str, ...]:
    return ("attention", "ffn") if cfg.placement == "both" else (cfg.placement,)


def size_of(cfg: AdapterMethod | HybridMethod, hidden: int) -> int:
    return hidden // cfg.reduction_factor if cfg.reduction_factor else cfg.adapter_size


def block_activations(shapes, cfg: AdapterMethod | HybridMethod) -> float:
    """Elements per token one adapter site keeps (planner)."""
    return ADAPTER_H * shapes.hidden + 3 * size_of(cfg, shapes.hidden)


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden: int, size: int, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = _ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(size, hidden)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # the adapter adds nothing until it has trained
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.dropout(self.act(self.down(hidden))))


def remember(model, cfg: AdapterMethod | HybridMethod, task: Task, heads: list[str]) -> None:
    """What the marker records: the config, the task and the heads saved with the adapters;
    trainer checkpoints hold them too (PEFT's would leave hybrid's adapters out)."""
    setattr(model, _STATE, {"method": cfg.model_dump(), "task": task, "heads": heads})
    keep_in_checkpoints(model, f".{NAME}.", *(f".{head}." for head in heads))


def attach(model, cfg: AdapterMethod | HybridMethod, sites: tuple[str, ...]) -> list[str]:
    """Put a trainable adapter after each block's `sites`; returns the adapted module names."""
    hidden = model.config.hidden_size
    size = size_of(cfg, hidden)
    targets = adapter_targets(model, sites)
    for target in targets.values():
        reference = next(target.parameters())
        adapter = BottleneckAdapter(hidden, size, cfg.activation, cfg.adapter_dropout)
        target.add_module(NAME, adapter.to(reference.device, reference.dtype))
        target.register_forward_hook(_add_adapter)
    return list(targets)


def adapter_targets(model, sites: tuple[str, ...]) -> dict[str, nn.Module]:
    """{name: module} of the attention / FFN block of every layer, in layer order."""
    found: dict[str, nn.Module] = {}
    blocks = [(n, m) for n, m in model.named_modules() if _BLOCK.search(n)]
    for site in sites:
        for block_name, block in blocks:
            names = [c for c in SITES[site] if isinstance(getattr(block, c, None), nn.Module)]
            if names:
                found[f"{block_name}.{names[0]}"] = getattr(block, names[0])
    if not found:
        raise ModelError(
            f"method adapter: found no layer blocks (layers.<i>, h.<i>, layer.<i>) with "
            f"{' or '.join(c for s in sites for c in SITES[s])} children in "
            f"{type(model).__name__}"
        )
    return found


def _add_adapter(module: nn.Module, args, output):
    adapter = getattr(module, NAME)
    if isinstance(output, torch.Tensor):
        return adapter(output)
    if isinstance(output, tuple):  # attention returns (hidden, weights, ...)
        return (adapter(output[0]), *output[1:])
    raise ModelError(f"method adapter: cannot adapt a {type(output).__name__} output")


def train_heads(model) -> list[str]:
    """A classification head starts random: it trains with the method and is saved with it."""
    heads = {n: m for n, m in model.named_children() if n in HEADS}
    if not heads:
        names = " or ".join(HEADS)
        raise ModelError(f"task seq_cls: {type(model).__name__} has no head named {names}")
    for head in heads.values():
        head.requires_grad_(True)
    return list(heads)


def own_weights(model) -> dict[str, torch.Tensor]:
    """The adapter (and head) tensors, named relative to the transformers model."""
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    heads = getattr(model, _STATE)["heads"]
    return {
        name: param.detach().contiguous()
        for name, param in root.named_parameters()
        if f".{NAME}." in f".{name}" or name.split(".")[0] in heads
    }


def save_weights(model, out_dir: Path) -> None:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(own_weights(model), out_dir / WEIGHTS)


def load_weights(model, folder: Path) -> None:
    from safetensors.torch import load_file

    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = load_file(Path(folder) / WEIGHTS)
    expected = own_weights(model)
    if set(saved) != set(expected):
        missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
        raise ModelError(
            f"{folder / WEIGHTS}: does not fit this base model (missing {missing[:3]}, "
            f"unexpected {extra[:3]})"
        )
    root.load_state_dict(saved, strict=False)
