"""Reward model training (stage rm) on TRL's RewardTrainer.

The causal LM gets a one-output sequence-classification head (the reward); the pairwise loss
-log sigmoid(r(chosen) - r(rejected)) teaches it to score the chosen answer higher. Pairwise
accuracy and the mean reward margin are logged by TRL and measured on held-out pairs before and
after training. The run folder loads back with train/cls.load_trained_classifier (one label).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from tunesmith.config.cls import ClsConfig
from tunesmith.config.schema import RunConfig
from tunesmith.data.registry import preference_sources
from tunesmith.models.classifier import load_classifier
from tunesmith.models.load import load_tokenizer
from tunesmith.models.methods import count_parameters
from tunesmith.runs.folder import LABELS as LABELS_FILE
from tunesmith.runs.folder import RunFolder
from tunesmith.train.callbacks import resume_checkpoint
from tunesmith.train.checkpoints import AtomicCheckpoints
from tunesmith.train.cls import apply_method, load_trained_classifier
from tunesmith.train.preference import (
    check_inputs,
    finish,
    held_out_rewards,
    logged_rewards,
    read_data,
    report_data,
    save,
    trainer_monitor,
    trl_arguments,
    wire_callbacks,
)
from tunesmith.train.sft import TrainResult, run_summary
from tunesmith.utils.console import console

REWARD_KEYS = ("accuracy", "margin")
LABELS = ["reward"]


def run_reward(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig

    check_inputs(config)
    sources = preference_sources(config.data)
    started = time.perf_counter()
    run.save_config(config)
    run.clear_rejects()
    set_seed(config.train.seed)

    model, _, resolved = load_classifier(config.model, LABELS, ClsConfig())
    tokenizer = load_tokenizer(resolved, config.model)  # with model.chat_template, if set
    model.config.pad_token_id = tokenizer.pad_token_id  # the reward is read at the last real token
    train_data, eval_data = read_data(config, sources, tokenizer, run, paired=True)
    report_data(train_data, run)
    model = apply_method(model, config)
    trainable, total = count_parameters(model)
    console.print(f"method {config.method.type}: {trainable:,} trainable of {total:,} parameters")

    args = RewardConfig(
        **trl_arguments(config.train, run, eval_data is not None, config.data.cutoff_len)
    )
    trainer = wire_callbacks(
        _trainer_class()(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(whole_sequences(train_data.examples)),
            eval_dataset=Dataset.from_list(whole_sequences(eval_data.examples))
            if eval_data
            else None,
            processing_class=tokenizer,
        ),
        config,
        run,
    )
    before = held_out_rewards(trainer, REWARD_KEYS) if eval_data else None
    checkpoint = resume_checkpoint(run, resume)
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    after = held_out_rewards(trainer, REWARD_KEYS) if eval_data else None

    artifact = save(trainer.model, tokenizer, run, config)
    run.write_text(LABELS_FILE, json.dumps(LABELS) + "\n")
    summary = {
        **run_summary(config, resolved.ref, (trainable, total), output, checkpoint, started),
        "data": train_data.stats,
        "eval_data": eval_data.stats if eval_data else None,
        "rewards": {"train": logged_rewards(trainer.state.log_history, REWARD_KEYS)}
        | ({"held_out_before": before, "held_out_after": after} if eval_data else {}),
        **trainer_monitor(trainer).summary(),
    }
    return finish(run, config, resolved.ref, artifact, summary, trainer_monitor(trainer))


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

    class PretokenizedRewardTrainer(AtomicCheckpoints, RewardTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # chosen_ids / rejected_ids rendered by data/preference.py

    return PretokenizedRewardTrainer


class RewardScorer:
    """Scores (conversation, answer) pairs with a trained rm run: higher is better."""

    def __init__(self, run_folder: str | Path):
        self.model, self.tokenizer, config, _ = load_trained_classifier(run_folder)
        self.cutoff_len = config.data.cutoff_len

    @torch.no_grad()
    def __call__(self, prompt: list[dict], answer: str) -> float:
        from tunesmith.data.preference import split_ids

        prompt_ids, answer_ids, _ = split_ids(self.tokenizer, prompt, answer, self.cutoff_len)
        ids = torch.tensor([prompt_ids + answer_ids], device=self.model.device)
        return self.model(input_ids=ids).logits[0, 0].item()
