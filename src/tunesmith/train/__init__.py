"""Training stages; `run_stage` runs the one train.stage names."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunesmith.config.schema import RunConfig
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train.recipe import TrainResult

# stage -> (module, function); imported only when that stage runs (training imports are heavy)
STAGES = {
    "sft": ("tunesmith.train.sft", "run_sft"),
    "pt": ("tunesmith.train.pt", "run_pt"),
    "cls": ("tunesmith.train.cls", "run_cls"),
    "dpo": ("tunesmith.train.preference", "run_preference"),
    "orpo": ("tunesmith.train.preference", "run_preference"),
    "simpo": ("tunesmith.train.preference", "run_preference"),
    "kto": ("tunesmith.train.preference", "run_preference"),
    "rm": ("tunesmith.train.reward", "run_reward"),
    "distill": ("tunesmith.train.distill", "run_distill"),
    "grpo": ("tunesmith.train.grpo", "run_grpo"),
    "ppo": ("tunesmith.train.ppo", "run_ppo"),
}


def run_stage(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    module, function = STAGES[config.train.stage]
    return getattr(import_module(module), function)(config, run, resume)
