"""Reward model training (stage rm) on TRL's RewardTrainer.

The causal LM gets a one-output sequence-classification head (the reward); the pairwise loss
-log sigmoid(r(chosen) - r(rejected)) teaches it to score the chosen answer higher. Pairwise
accuracy and the mean reward margin are logged by TRL and measured on held-out pairs before and
after training. The run folder loads back with runs/trained.open_run (one label, "reward").

With train.optimize (the default) the pairs train packed (train/preference_speed.PackedReward):
a batch's chosen and rejected sequences end to end in one row, each attending to itself only,
the reward read at each one's last token; the loss and metrics are TRL's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.config.cls import ClsConfig
from tunesmith.config.schema import RunConfig
from tunesmith.data.registry import preference_sources
from tunesmith.models.classifier import load_classifier
from tunesmith.models.load import load_tokenizer
from tunesmith.runs.folder import LABELS as LABELS_FILE
from tunesmith.runs.folder import RunFolder
from tunesmith.runs.trained import open_run
from tunesmith.train.arguments import trl_arguments
from tunesmith.train.checkpoints import AtomicCheckpoints
from tunesmith.train.preference_speed import PackedReward, packed_reward_applies
from tunesmith.train.recipe import Job, Loaded, Probe, Recipe, TrainResult, train
from tunesmith.train.rewards import Rewards, preference_examples
from tunesmith.train.trainer import NO_LOSS_HOOKS, SequenceTokens
from tunesmith.utils.errors import ModelError

REWARD_KEYS = ("accuracy", "margin")
LABELS = ["reward"]


def run_reward(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    return train(RM, config, run, resume)


def _load(job: Job, quantization) -> Loaded:
    model, _, resolved = load_classifier(job.config.model, LABELS, ClsConfig(), quantization)
    tokenizer = load_tokenizer(resolved, job.config.model)  # with model.chat_template, if set
    model.config.pad_token_id = tokenizer.pad_token_id  # the reward is read at the last real token
    return Loaded(model, tokenizer, resolved.ref)


def _trainer(job: Job):
    from datasets import Dataset
    from trl import RewardConfig

    config, data = job.config, job.data
    args = RewardConfig(
        **trl_arguments(config.train, job.run, data.eval is not None, config.data.cutoff_len)
    )
    packed = packed_reward_applies(config, job.model, args)
    more = {}
    if packed:
        pad = job.loaded.tokenizer.pad_token_id
        more["data_collator"] = PackedReward.collator(pad, config.data.cutoff_len)
    trainer = _trainer_class()(
        model=job.model,
        args=args,
        train_dataset=Dataset.from_list(whole_sequences(data.train)),
        eval_dataset=Dataset.from_list(whole_sequences(data.eval)) if data.eval else None,
        processing_class=job.loaded.tokenizer,
        **more,
    )
    if packed:
        PackedReward.attach(trainer)
    return trainer


class _Labels(Probe):
    def on_end(self, job: Job, trainer) -> dict:
        job.run.write_text(LABELS_FILE, json.dumps(LABELS) + "\n")
        return {}


def whole_sequences(examples: list[dict]) -> list[dict]:
    """The reward model reads prompt and answer as one sequence."""
    return [
        {
            "chosen_ids": e["prompt_ids"] + e["chosen_ids"],
            "rejected_ids": e["prompt_ids"] + e["rejected_ids"],
        }
        for e in examples
    ]


def _trainer_class():
    from trl import RewardTrainer

    class PretokenizedRewardTrainer(AtomicCheckpoints, PackedReward, SequenceTokens, RewardTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # chosen_ids / rejected_ids rendered by data/preference.py

    return PretokenizedRewardTrainer


class RewardScorer:
    """Scores (conversation, answer) pairs with a trained rm run: higher is better."""

    def __init__(self, run_folder: str | Path):
        run = open_run(run_folder)
        if run.stage != "rm" or run.config is None:
            raise ModelError(f"'{run_folder}' is not a reward-model run folder")
        self.model, self.tokenizer = run.load()
        self.cutoff_len = run.config.data.cutoff_len
        self.truncation = run.config.train.preference.truncation

    @torch.no_grad()
    def __call__(self, prompt: list[dict], answer: str) -> float:
        from tunesmith.data.preference import split_ids

        prompt_ids, answer_ids, _ = split_ids(
            self.tokenizer, prompt, answer, self.cutoff_len, self.truncation
        )
        ids = torch.tensor([prompt_ids + answer_ids], device=self.model.device)
        return self.model(input_ids=ids).logits[0, 0].item()


RM = Recipe(
    name="rm",
    task="seq_cls",
    read=lambda job: preference_sources(job.config.data),
    load=_load,
    data=preference_examples,
    trainer=_trainer,
    probes=lambda job: [Rewards(job, REWARD_KEYS), _Labels()],
    refuses=NO_LOSS_HOOKS,
    example="pairs.jsonl",
    speed=True,  # train.optimize: models/speed.py's levers and the packed pairs
)
