"""Freeze tuning: train only the last N decoder layers and/or named modules."""

from __future__ import annotations

import re

from tunesmith.config.methods import FreezeMethod
from tunesmith.models.methods.full import ARTIFACT, save  # the same artifact: a full model
from tunesmith.utils.errors import ConfigError

__all__ = ["ARTIFACT", "apply", "layer_index", "save"]

# Decoder blocks are `...layers.<i>.` in Llama-style models, `h.<i>` in GPT-2, `layer.<i>` in BERT.
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")


def apply(model, cfg: FreezeMethod):
    if not (cfg.trainable_layers or cfg.trainable_modules):
        raise ConfigError(
            "method: freeze with trainable_layers=0 and no trainable_modules trains nothing"
        )
    names = [name for name, _ in model.named_parameters()]
    layer_ids = sorted({int(m.group(1)) for n in names if (m := _LAYER.search(n))})
    if cfg.trainable_layers > len(layer_ids):
        raise ConfigError(
            f"method.trainable_layers: got {cfg.trainable_layers}, the model has "
            f"{len(layer_ids)} layers"
        )
    train_layers = set(layer_ids[len(layer_ids) - cfg.trainable_layers :])
    unmatched = [m for m in cfg.trainable_modules if not any(_has_module(n, m) for n in names)]
    if unmatched:
        raise ConfigError(f"method.trainable_modules: no module named {unmatched} in the model")
    for name, param in model.named_parameters():
        layer = _LAYER.search(name)
        in_layer = layer is not None and int(layer.group(1)) in train_layers
        named = any(_has_module(name, m) for m in cfg.trainable_modules)
        param.requires_grad_(in_layer or named)
    return model


def layer_index(param_name: str) -> int | None:
    """The decoder block a parameter belongs to; None outside the blocks (embeddings, head)."""
    match = _LAYER.search(param_name)
    return int(match.group(1)) if match else None


def _has_module(param_name: str, module: str) -> bool:
    return f".{module}." in f".{param_name}"
