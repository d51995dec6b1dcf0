"""Proximal Policy Optimization (train.stage: ppo): RLHF's last step, as seed 004 §5.3 has it.

TRL 1.x no longer ships a PPO trainer (its `PPOTrainer` was removed; GRPO and RLOO are its
online trainers), so this stage holds the algorithm itself on the transformers Trainer, which
gives it the recipe's checkpoints, resume, callbacks and metrics: each step samples one
completion per prompt from the policy, scores it with the reward functions of train.ppo.rewards
(a `reward_model` run is the classic setup), and makes the per-token reward the score at the last
token minus kl_coef x (log pi - log pi_ref) at every token (KL to the starting policy, 0.1 by
default). A value head (one linear layer on the policy's last hidden state) gives the baseline;
advantages are GAE(gamma, lam), whitened; then ppo_epochs passes of the clipped policy loss
plus vf_coef x the clipped value loss. The reference is the policy with its LoRA adapter off,
or a frozen copy for methods that change the base weights.

The policy starts from train.ppo.policy (a tunesmith SFT run, merged) or the model section.
metrics.jsonl gets reward, kl, entropy, policy_loss and value_loss per logged step; the value
head is saved in every checkpoint beside the policy, so a resumed run goes on exactly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from tunesmith.config.schema import RunConfig
from tunesmith.data.render import prompt_ids
from tunesmith.runs.folder import RunFolder
from tunesmith.train.arguments import trainer_kwargs
from tunesmith.train.checkpoints import AtomicCheckpoints
from tunesmith.train.prompts import prompt_examples, read_prompt_files, report_prompts
from tunesmith.train.recipe import Job, Loaded, Probe, Recipe, TrainResult, load_causal_lm, train
from tunesmith.train.reward_functions import build_rewards, score
from tunesmith.train.rewards import logged_rewards
from tunesmith.train.trainer import NO_LOSS_HOOKS
from tunesmith.utils.errors import ConfigError

VALUE_HEAD = "value_head.safetensors"  # in each checkpoint
PPO_KEYS = ("reward", "kl", "entropy", "policy_loss", "value_loss")


def run_ppo(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    return train(PPO, config, run, resume)


def _check(config: RunConfig) -> None:
    if config.train.ppo is None:
        raise ConfigError(
            "train.ppo: stage ppo needs its reward, e.g. "
            "train.ppo.rewards=[{name: reward_model, run: runs/my-rm}]"
        )
    if config.train.gradient_accumulation_steps != 1:
        raise ConfigError(
            "train.gradient_accumulation_steps: stage ppo takes one rollout per step; use "
            "train.batch_size for more prompts per step"
        )
    if config.data.dataset:
        raise ConfigError("data.dataset: stage ppo reads prompt files from data.train only")


def _load(job: Job, quantization) -> Loaded:
    policy = job.config.train.ppo.policy
    if policy is None:
        loaded = load_causal_lm(job, quantization)
    else:
        from tunesmith.runs.trained import open_run

        run = open_run(policy)
        model, tokenizer = run.load()
        if run.is_adapter:
            model = run.method.merge(model)  # the SFT policy becomes the base the method tunes
        model.train()
        loaded = Loaded(model, tokenizer, str(Path(policy)))
    if job.config.method.type != "lora":  # full/freeze change the weights the reference keeps
        loaded.reference = copy.deepcopy(loaded.model).eval().requires_grad_(False)
    return loaded


def _data(job: Job):
    return prompt_examples(job, job.config.train.ppo)


def _trainer(job: Job):
    from datasets import Dataset
    from transformers import TrainingArguments

    config = job.config
    kwargs = trainer_kwargs(config.train, job.run, has_eval=False)
    kwargs["include_num_input_tokens_seen"] = "no"  # counted by the rollouts
    args = TrainingArguments(**kwargs, remove_unused_columns=False)
    return _trainer_class()(
        model=job.model,
        args=args,
        train_dataset=Dataset.from_list(job.data.train),
        data_collator=lambda rows: rows,
        processing_class=job.loaded.tokenizer,
        ppo=config.train.ppo,
        reference=job.loaded.reference,
    )


class _Summary(Probe):
    def on_end(self, job: Job, trainer) -> dict:
        return {"rewards": {"train": logged_rewards(trainer.state.log_history, PPO_KEYS)}}


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


def gae(rewards, values, mask, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) of per-token rewards and values over the completion tokens."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        following = values[:, t + 1] * mask[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def _trainer_class():
    from transformers import Trainer

    class PPOTrainer(AtomicCheckpoints, Trainer):
        def __init__(self, *args, ppo, reference, **kwargs):
            super().__init__(*args, **kwargs)
            self.ppo, self.reference = ppo, reference
            self.reward_functions, self.reward_weights = build_rewards(ppo.rewards)
            hidden = self.model.config.hidden_size
            self.value_head = nn.Linear(hidden, 1).to(self.model.device)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
            self._stats: dict[str, list[float]] = {k: [] for k in PPO_KEYS}

        # the value head trains with the policy and lives in every checkpoint
        def create_optimizer(self, model=None):
            optimizer = super().create_optimizer(model)
            optimizer.add_param_group(
                {"params": list(self.value_head.parameters()), "weight_decay": 0.0}
            )
            return optimizer

        def _save(self, output_dir=None, state_dict=None):
            from safetensors.torch import save_file

            super()._save(output_dir, state_dict)
            folder = Path(output_dir or self.args.output_dir)
            save_file(self.value_head.state_dict(), folder / VALUE_HEAD)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            from safetensors.torch import load_file

            super()._load_from_checkpoint(resume_from_checkpoint, model)
            path = Path(resume_from_checkpoint) / VALUE_HEAD
            if path.is_file():
                self.value_head.load_state_dict(load_file(path, device=str(self.model.device)))

        # --- one PPO step: rollout, advantages, ppo_epochs updates -----------------------

        def _forward(self, model, ids, mask, prompt_len):
            """(log-probs of the completion tokens, entropies, values) at their positions."""
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                output_hidden_states=True,
            )
            logits = out.logits[:, prompt_len - 1 : -1].float() / self.ppo.temperature
            logp_all = torch.log_softmax(logits, -1)
            logp = logp_all.gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            hidden = out.hidden_states[-1][:, prompt_len - 1 : -1]
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
            return logp, entropy, values

        @torch.no_grad()
        def _rollout(self, model, rows):
            tokenizer, device = self.processing_class, self.model.device
            prompts = [prompt_ids(tokenizer, r["prompt"]) for r in rows]
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor(
                [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device
            )
            model.eval()
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=self.ppo.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=self.ppo.max_completion_length,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            model.train()
            completion = output[:, width:]
            # the completion's tokens up to and with its first end token
            ended = (completion == tokenizer.eos_token_id).long().cumsum(-1)
            keep = ((ended == 0) | ((ended == 1) & (completion == tokenizer.eos_token_id))).long()
            texts = tokenizer.batch_decode(
                completion * keep + pad * (1 - keep), skip_special_tokens=True
            )
            columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
            scores = score(
                self.reward_functions,
                self.reward_weights,
                [r["prompt"] for r in rows],
                texts,
                **columns,
            )
            full_mask = torch.cat([mask, keep], dim=1)
            self.state.num_input_tokens_seen += int(full_mask.sum())
            return output, full_mask, keep.float(), torch.tensor(scores, device=device), width

        def training_step(self, model, inputs, num_items_in_batch=None):
            cfg = self.ppo
            # the Trainer zeroes the model's gradients after its step, not the value head's
            self.value_head.zero_grad(set_to_none=True)
            ids, mask, comp_mask, scores, width = self._rollout(model, inputs)
            with torch.no_grad():
                old_logp, entropy, old_values = self._forward(model, ids, mask, width)
                if self.reference is not None:
                    ref_logp, _, _ = self._forward(self.reference, ids, mask, width)
                else:
                    with model.disable_adapter():
                        ref_logp, _, _ = self._forward(model, ids, mask, width)
                kl = (old_logp - ref_logp) * comp_mask
                rewards = -cfg.kl_coef * kl
                last = (comp_mask.sum(-1).long() - 1).clamp(min=0)
                rewards[torch.arange(len(last)), last] += scores
                if cfg.whiten_rewards:
                    rewards = whiten(rewards, comp_mask)
                advantages, returns = gae(rewards, old_values, comp_mask, cfg.gamma, cfg.lam)
                advantages = whiten(advantages, comp_mask)
            for epoch in range(cfg.ppo_epochs):
                logp, _, values = self._forward(model, ids, mask, width)
                ratio = torch.exp(logp - old_logp)
                clipped = ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
                pg = masked_mean(torch.max(-advantages * ratio, -advantages * clipped), comp_mask)
                v_clipped = old_values + (values - old_values).clamp(
                    -cfg.clip_range_value, cfg.clip_range_value
                )
                vf = 0.5 * masked_mean(
                    torch.max((values - returns) ** 2, (v_clipped - returns) ** 2), comp_mask
                )
                loss = pg + cfg.vf_coef * vf
                self.accelerator.backward(loss)
                if epoch < cfg.ppo_epochs - 1:  # the last pass is stepped by the Trainer
                    params = [*model.parameters(), *self.value_head.parameters()]
                    torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
            stats = {
                "reward": scores.mean().item(),
                "kl": kl.sum(-1).mean().item(),
                "entropy": masked_mean(entropy, comp_mask).item(),
                "policy_loss": pg.item(),
                "value_loss": vf.item(),
            }
            for key, value in stats.items():
                self._stats[key].append(value)
            return loss.detach()

        def log(self, logs: dict, start_time=None) -> None:
            if "loss" in logs:
                for key, values in self._stats.items():
                    if values:
                        logs[key] = round(sum(values) / len(values), 6)
                self._stats = {k: [] for k in PPO_KEYS}
            super().log(logs, start_time)

    return PPOTrainer


PPO = Recipe(
    name="ppo",
    check=_check,
    read=read_prompt_files,
    load=_load,
    data=_data,
    report=report_prompts,
    trainer=_trainer,
    probes=lambda job: [_Summary()],
    has_eval=lambda job: False,
    refuses=NO_LOSS_HOOKS,
    example="prompts.jsonl",
)
