"""Freeze tuning: train only the last N blocks and/or named modules, optionally unfreezing more
from the top in stages (progressive unfreezing, chapter 3).

With a schedule, `apply` marks everything the last stage trains as trainable, so the optimizer
holds it from the start; train/callbacks.py's ProgressiveUnfreeze then narrows training to the
current stage and widens it as steps (or epochs) pass. A frozen parameter gets no gradient, and
the optimizer leaves a parameter without a gradient untouched.
"""

from __future__ import annotations

import re

from tunesmith.config.methods import FreezeMethod, UnfreezeStage
from tunesmith.models.methods._peft import HEADS, Task
from tunesmith.models.methods.full import ARTIFACT, save  # the same artifact: a full model
from tunesmith.utils.errors import ConfigError

__all__ = ["ARTIFACT", "MERGEABLE", "apply", "layer_index", "save", "stages"]

MERGEABLE = False
STAGES = "_tunesmith_unfreeze_stages"  # model attribute read by the ProgressiveUnfreeze callback

# Decoder blocks are `...layers.<i>.` in Llama-style models, `h.<i>` in GPT-2, `layer.<i>` in BERT.
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")


def apply(model, cfg: FreezeMethod, task: Task = "causal_lm"):
    if not (cfg.trainable_layers or cfg.trainable_modules or cfg.unfreeze_schedule):
        raise ConfigError(
            "method: freeze with trainable_layers=0 and no trainable_modules trains nothing"
        )
    plan = stages(model, cfg, task)
    final = plan[-1][1]
    for name, param in model.named_parameters():
        param.requires_grad_(name in final)
    if cfg.unfreeze_schedule:
        setattr(model, STAGES, {"unit": cfg.unfreeze_unit, "stages": plan})
    return model


def stages(model, cfg: FreezeMethod, task: Task = "causal_lm") -> list[tuple[int, set[str]]]:
    """[(start step or epoch, names of the parameters trained from then on)], widening."""
    names = [name for name, _ in model.named_parameters()]
    layer_ids = sorted({int(m.group(1)) for n in names if (m := _LAYER.search(n))})
    heads = [h for h in HEADS if any(_has_module(n, h) for n in names)] if task == "seq_cls" else []
    first = UnfreezeStage(at=1, layers=cfg.trainable_layers, modules=cfg.trainable_modules)
    plan, modules = [], list(heads)
    for start, stage in [(0, first)] + [(s.at, s) for s in cfg.unfreeze_schedule]:
        modules += stage.modules
        plan.append((start, _selected(names, layer_ids, stage.layers, modules)))
    return plan


def _selected(names: list[str], layer_ids: list[int], layers, modules: list[str]) -> set[str]:
    if layers == "all":
        return set(names)
    if layers > len(layer_ids):
        raise ConfigError(
            f"method.trainable_layers: got {layers}, the model has {len(layer_ids)} layers"
        )
    unmatched = [m for m in modules if not any(_has_module(n, m) for n in names)]
    if unmatched:
        raise ConfigError(f"method.trainable_modules: no module named {unmatched} in the model")
    top = set(layer_ids[len(layer_ids) - layers :])
    in_top = lambda name: layer_index(name) in top  # noqa: E731  (None is in no set of ints)
    return {n for n in names if in_top(n) or any(_has_module(n, m) for m in modules)}


def layer_index(param_name: str) -> int | None:
    """The decoder block a parameter belongs to; None outside the blocks (embeddings, head)."""
    match = _LAYER.search(param_name)
    return int(match.group(1)) if match else None


def _has_module(param_name: str, module: str) -> bool:
    return f".{module}." in f".{param_name}"
