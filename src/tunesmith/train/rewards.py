"""The reward metrics TRL's trainers log, reported by the preference and reward stages."""

from __future__ import annotations

from tunesmith.data.preference import build_preference_data
from tunesmith.train.recipe import Data, Job, Probe

# logged by the preference trainers; "eval_" + key on held-out data
PREFERENCE_KEYS = ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")


class Rewards(Probe):
    """The first and last logged training rewards, and held-out ones before and after training
    (with data.eval)."""

    def __init__(self, job: Job, keys: tuple[str, ...] = PREFERENCE_KEYS):
        self.keys, self.held_out = keys, job.data.eval is not None
        self.before = None

    def on_start(self, trainer) -> None:
        if self.held_out:
            self.before = held_out_rewards(trainer, self.keys)

    def on_end(self, job: Job, trainer) -> dict:
        rewards = {"train": logged_rewards(trainer.state.log_history, self.keys)}
        if self.held_out:
            rewards |= {
                "held_out_before": self.before,
                "held_out_after": held_out_rewards(trainer, self.keys),
            }
        return {"rewards": rewards}


def logged_rewards(history: list[dict], keys: tuple[str, ...] = PREFERENCE_KEYS) -> dict:
    """The first and last logged training values of the reward metrics."""
    logs = [h for h in history if any(k in h for k in keys) and "loss" in h]
    pick = lambda h: {k: round(h[k], 4) for k in keys if k in h}  # noqa: E731
    return {"first": pick(logs[0]), "last": pick(logs[-1])} if logs else {}


def held_out_rewards(trainer, keys: tuple[str, ...] = PREFERENCE_KEYS) -> dict:
    metrics = trainer.evaluate()
    wanted = ("eval_loss", *(f"eval_{k}" for k in keys))
    return {k.removeprefix("eval_"): round(v, 4) for k, v in metrics.items() if k in wanted}


def preference_examples(job: Job, paired: bool = True) -> Data:
    """The pairs (or kto's single answers) of data.train and data.eval, truncated as
    train.preference.truncation says: the data of every preference stage and of rm."""
    config, tokenizer, reject = job.config, job.loaded.tokenizer, job.run.reject
    cut = config.train.preference.truncation

    def build(sources):
        return build_preference_data(sources, config.data, tokenizer, paired, reject, cut)

    return Data.of(build(job.sources), build(config.data.eval) if config.data.eval else None)
