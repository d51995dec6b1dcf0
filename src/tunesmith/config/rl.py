"""Settings of the online RL stages: grpo (TRL's GRPOTrainer) and ppo (actor-critic with a value
head and a KL penalty to the SFT policy)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunesmith.config.base import Section

# the built-in reward functions (train/reward_functions.py); any other name is a dotted path
BUILTIN_REWARDS = ("exact", "numeric", "format", "length", "language", "reward_model", "judge")
# what each built-in needs besides `name`
_NEEDS = {
    "format": "pattern",
    "length": "target",
    "language": "language",
    "reward_model": "run",
    "judge": "judge",
}
_OPTIONS = ("pattern", "target", "language", "run", "judge", "criteria")

# train.grpo.loss: one key for the loss variants TRL 1.x offers (see train/grpo.py LOSSES)
GRPO_LOSSES = ("grpo", "dapo", "dr_grpo", "gspo", "bnpo", "cispo", "sapo")


class RewardSpec(Section):
    """One reward function: a built-in name or a user function by dotted path."""

    name: str = Field(
        ...,
        description="exact | numeric | format | length | language | reward_model | judge, or a "
        "Python function by dotted path (package.module.function or package.module:function) "
        "called as f(prompts, completions, answer=..., **columns) -> list[float].",
    )
    weight: float = Field(1.0, description="Weight of this reward in the sum.")
    pattern: str | None = Field(
        None, description="format: a regular expression the whole completion must match."
    )
    target: int | None = Field(
        None, gt=0, description="length: completions up to this many characters get 1.0."
    )
    language: Literal["en", "zh"] | None = Field(
        None, description="language: the language the completion must be written in."
    )
    run: str | None = Field(None, description="reward_model: a tunesmith rm run folder.")
    judge: str | None = Field(
        None,
        description="judge: the LLM judge (local:<model or run>, or an OpenAI-compatible URL as "
        "http://host:port/v1#model); its rubric score 1-10 becomes a reward 0-1.",
    )
    criteria: str | None = Field(
        None, description="judge: what a good answer is, shown to the judge as its reference."
    )

    @model_validator(mode="after")
    def _options_fit(self) -> RewardSpec:
        name = self.name
        if name not in BUILTIN_REWARDS and "." not in name:
            raise ValueError(
                f"unknown reward '{name}'; built-in: {', '.join(BUILTIN_REWARDS)}, or a Python "
                "function by dotted path (my_package.rewards.score)"
            )
        needed = _NEEDS.get(name)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"reward '{name}' needs '{needed}'")
        allowed = {needed, "criteria"} if name == "judge" else {needed}
        for option in _OPTIONS:
            if getattr(self, option) is not None and option not in allowed:
                raise ValueError(f"'{option}' does not apply to reward '{name}'")
        return self


class GrpoConfig(Section):
    """GRPO: several completions per prompt, scored by reward functions, advantages within the
    group (TRL's GRPOTrainer)."""

    rewards: list[RewardSpec] = Field(
        ..., min_length=1, description="The reward functions; their weighted sum is the reward."
    )
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the group).")
    max_completion_length: int = Field(128, ge=1, description="Tokens per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(
        0.0,
        ge=0,
        description="KL coefficient to the starting model; 0 (TRL's default): no reference kept.",
    )
    loss: Literal["grpo", "dapo", "dr_grpo", "gspo", "bnpo", "cispo", "sapo"] = Field(
        "dapo",
        description="grpo: per-sequence mean; dapo (TRL's default): token mean over the batch, "
        "upper clip 0.28; dr_grpo: a constant normaliser, rewards not scaled by their std; gspo: "
        "sequence-level importance ratios (GSPO's clip 3e-4/4e-4); bnpo, cispo, sapo: as TRL.",
    )
    num_iterations: int = Field(
        1, ge=1, description="Optimisation passes per generated batch (mu)."
    )
    epsilon: float | None = Field(None, gt=0, description="Lower clip; None: the loss's own.")
    mask_truncated_completions: bool = Field(
        False, description="Completions cut at max_completion_length take no part in the loss."
    )
    vllm: bool = Field(
        False, description="Generate with vLLM (colocated) on a CUDA GPU; needs vllm installed."
    )


class PpoConfig(Section):
    """PPO: a policy (an SFT run or a model), a value head, a reward per completion from a
    reward-model run or reward functions, and a KL penalty to the starting policy."""

    rewards: list[RewardSpec] = Field(
        ...,
        min_length=1,
        description="Reward functions (one reward_model entry is the classic RLHF setup).",
    )
    policy: str | None = Field(
        None,
        description="The starting policy: a tunesmith SFT run folder (an adapter is merged into "
        "its base first); None: the model section's model.",
    )
    kl_coef: float = Field(0.1, ge=0, description="KL penalty to the starting policy (seed: 0.1).")
    max_completion_length: int = Field(64, ge=1, description="Tokens per completion.")
    temperature: float = Field(1.0, gt=0)
    ppo_epochs: int = Field(2, ge=1, description="Optimisation passes over each rollout batch.")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clip.")
    clip_range_value: float = Field(0.2, gt=0, description="Value clip.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_rewards: bool = False
