"""Freeze tuning: train only the last N blocks and/or named modules, optionally unfreezing more
from the top in stages (progressive unfreezing, chapter 3).

With a schedule, `apply` marks everything the last stage trains as trainable, so the optimizer
holds it from the start; train/callbacks.py's ProgressiveUnfreeze then narrows training to the
current stage and widens it as steps (or epochs) pass. A frozen parameter gets no gradient, and
the optimizer leaves a parameter without a gradient untouched.
"""

from __future__ import annotations

import re

from transformers import TrainerCallback

from tunesmith.config.methods import FreezeMethod, UnfreezeStage
from tunesmith.models.methods._peft import HEADS
from tunesmith.models.methods.base import Task, register
from tunesmith.models.methods.full import Full
from tunesmith.utils.errors import ConfigError

STAGES = "_tunesmith_unfreeze_stages"  # model attribute read by the ProgressiveUnfreeze callback

# Decoder blocks are `...layers.<i>.` in Llama-style models, `h.<i>` in GPT-2, `layer.<i>` in BERT.
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")


@register
class Freeze(Full):
    """The artifact is a whole model, as for full fine-tuning."""

    name = "freeze"
    config = FreezeMethod
    vision_language = False  # its top-N blocks would count the vision tower's blocks too
    learning_rate = 5e-5
    why = "training only the top layers is fast (no gradients below them) but adapts less"

    def apply(self, model, cfg: FreezeMethod, task: Task = "causal_lm"):
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

    def callbacks(self, model) -> list:
        plan = getattr(model, STAGES, None)
        return [ProgressiveUnfreeze(plan["stages"], plan["unit"])] if plan else []

    def trained_blocks(self, cfg: FreezeMethod, layers: int) -> int:
        return min(cfg.trainable_layers, layers)

    def advised(self, scale: str, layers: int, parameters: int) -> dict:
        return {"method.trainable_layers": max(1, layers // 4)}

    def trains_embeddings(self, cfg: FreezeMethod) -> bool:
        return "embed_tokens" in cfg.trainable_modules


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


class ProgressiveUnfreeze(TrainerCallback):
    """Trains the stage of `stages` ([(start, parameter names)], see models/methods/freeze.py)
    that the step count (or epoch) has reached; on resume it picks up the right stage."""

    def __init__(self, stages: list[tuple[int, set[str]]], unit: str = "steps"):
        self.stages, self.unit = stages, unit

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.unit == "steps":
            self._apply(state, model)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        if self.unit == "epochs":
            self._apply(state, model)

    def _apply(self, state, model) -> None:
        now = state.global_step if self.unit == "steps" else int(state.epoch or 0)
        trained = [names for start, names in self.stages if start <= now][-1]
        for name, param in model.named_parameters():
            param.requires_grad_(name in trained)
