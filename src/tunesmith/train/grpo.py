"""Group Relative Policy Optimization (train.stage: grpo) on TRL's GRPOTrainer.

For each prompt the model samples `num_generations` completions; the reward functions named in
train.grpo.rewards (train/reward_functions.py) score them, and each completion's advantage is
its reward against its group's. Prompts are rendered by data/render.prompt_ids, the one chat
rendering; generation is TRL's (transformers' batched `generate`, or vLLM colocated on a CUDA
GPU with train.grpo.vllm). The run's metrics.jsonl gets reward, reward_std, kl, entropy and each
reward function's mean per logged step; summary.json the first and last logged rewards and,
with data.eval, the held-out mean reward before and after.

train.batch_size counts completions (TRL's convention): batch_size x gradient_accumulation_steps
must be a multiple of num_generations, so that whole groups share an optimizer step.
"""

from __future__ import annotations

import torch

from tunesmith.config.schema import RunConfig
from tunesmith.data.render import prompt_ids
from tunesmith.runs.folder import RunFolder
from tunesmith.train.arguments import trainer_kwargs
from tunesmith.train.checkpoints import AtomicCheckpoints
from tunesmith.train.prompts import prompt_examples, read_prompt_files, report_prompts
from tunesmith.train.recipe import Data, Job, Recipe, TrainResult, train
from tunesmith.train.reward_functions import build_rewards
from tunesmith.train.rewards import Rewards
from tunesmith.train.trainer import NO_LOSS_HOOKS
from tunesmith.utils.errors import ConfigError

# logged by GRPOTrainer each step ("eval_" + key on held-out prompts)
GRPO_KEYS = ("reward", "reward_std", "kl", "entropy")

# train.grpo.loss -> TRL 1.x GRPOConfig settings (grpo_config.py: loss_type,
# importance_sampling_level, scale_rewards, epsilon / epsilon_high)
LOSSES: dict[str, dict] = {
    "grpo": {"loss_type": "grpo"},
    "dapo": {"loss_type": "dapo", "epsilon_high": 0.28},
    "dr_grpo": {"loss_type": "dr_grpo", "scale_rewards": "none"},
    # GSPO: sequence-level ratios with its much tighter clip (TRL's paper index)
    "gspo": {
        "loss_type": "grpo",
        "importance_sampling_level": "sequence",
        "epsilon": 3e-4,
        "epsilon_high": 4e-4,
    },
    "bnpo": {"loss_type": "bnpo"},
    "cispo": {"loss_type": "cispo", "epsilon_high": 5.0},
    "sapo": {"loss_type": "sapo"},
}


def run_grpo(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    return train(GRPO, config, run, resume)


def _check(config: RunConfig) -> None:
    cfg, train_cfg = config.train.grpo, config.train
    if cfg is None:
        raise ConfigError(
            "train.grpo: stage grpo needs its reward functions, e.g. "
            "train.grpo.rewards=[{name: numeric}]"
        )
    if config.data.dataset:
        raise ConfigError("data.dataset: stage grpo reads prompt files from data.train only")
    group = train_cfg.batch_size * train_cfg.gradient_accumulation_steps
    if group % cfg.num_generations:
        raise ConfigError(
            f"train.batch_size: stage grpo counts completions; batch_size x "
            f"gradient_accumulation_steps ({group}) must be a multiple of "
            f"train.grpo.num_generations ({cfg.num_generations})"
        )
    if config.data.eval and train_cfg.batch_size % cfg.num_generations:
        raise ConfigError(
            f"train.batch_size: held-out prompts are scored in whole groups; batch_size "
            f"({train_cfg.batch_size}) must be a multiple of num_generations "
            f"({cfg.num_generations})"
        )
    if cfg.vllm:
        check_vllm()


def check_vllm() -> None:
    if not torch.cuda.is_available():
        raise ConfigError(
            "train.grpo.vllm: vLLM generation needs a CUDA GPU and none is visible; "
            "set train.grpo.vllm=false to generate with transformers"
        )
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ConfigError(
            "train.grpo.vllm: vllm is not installed (pip install 'tunesmith[gpu]')"
        ) from None


def _data(job: Job) -> Data:
    return prompt_examples(job, job.config.train.grpo)


def grpo_arguments(config: RunConfig, run: RunFolder, has_eval: bool) -> dict:
    cfg = config.train.grpo
    loss = dict(LOSSES[cfg.loss])
    if cfg.epsilon is not None:
        loss["epsilon"] = cfg.epsilon
    vllm = {"use_vllm": True, "vllm_mode": "colocate"} if cfg.vllm else {}
    shared = trainer_kwargs(config.train, run, has_eval)
    shared["include_num_input_tokens_seen"] = "no"  # GRPOTrainer counts prompt + completion
    return dict(
        **shared,
        activation_checkpointing=False,  # train.gradient_checkpointing is the recipe's
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        num_iterations=cfg.num_iterations,
        mask_truncated_completions=cfg.mask_truncated_completions,
        reward_weights=[r.weight for r in cfg.rewards],
        remove_unused_columns=False,  # the reward functions read the records' other columns
        log_completions=False,
        **loss,
        **vllm,
    )


def _trainer(job: Job):
    from datasets import Dataset
    from trl import GRPOConfig

    config, data = job.config, job.data
    functions, _ = build_rewards(config.train.grpo.rewards)
    args = GRPOConfig(**grpo_arguments(config, job.run, data.eval is not None))
    return _trainer_class()(
        model=job.model,
        reward_funcs=functions,
        args=args,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.eval) if data.eval else None,
        processing_class=job.loaded.tokenizer,
    )


def _trainer_class():
    from trl import GRPOTrainer

    class Trainer(AtomicCheckpoints, GRPOTrainer):
        def _tokenize_prompts(self, prompts: list):
            """Prompts rendered by data/render.prompt_ids (the one chat rendering; control-token
            text in a message stays text)."""
            if isinstance(prompts[0], list):
                return [prompt_ids(self.processing_class, p) for p in prompts], None, {}
            return super()._tokenize_prompts(prompts)

    return Trainer


GRPO = Recipe(
    name="grpo",
    check=_check,
    read=read_prompt_files,
    data=_data,
    report=report_prompts,
    trainer=_trainer,
    probes=lambda job: [Rewards(job, GRPO_KEYS)],
    refuses=NO_LOSS_HOOKS,
    example="prompts.jsonl",
)
