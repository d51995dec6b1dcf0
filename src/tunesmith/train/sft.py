"""Supervised fine-tuning (train.stage: sft): chat data, the answers trained.

The run is train/recipe.py's; this stage says what it reads and how it tokenizes it. A model
whose config is a vision-language one trains on image + text conversations with the recipe of
train/vlm.py (the same stage, its model detected).
"""

from __future__ import annotations

from tunesmith.config.schema import RunConfig
from tunesmith.data.registry import sft_sources
from tunesmith.runs.folder import RunFolder
from tunesmith.train.forgetting import replay_sources
from tunesmith.train.recipe import Job, TrainResult, train
from tunesmith.train.trainer import causal_lm_recipe, chat_data


def run_sft(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    from tunesmith.models.vlm import is_vision_language

    if is_vision_language(config.model):
        from tunesmith.train.vlm import VLM

        return train(VLM, config, run, resume)
    return train(SFT, config, run, resume)


def _read(job: Job) -> tuple[list, list]:
    # registry mistakes surface before the model loads
    return sft_sources(job.config.data), replay_sources(job.config.data)


SFT = causal_lm_recipe("sft", _read, chat_data)
