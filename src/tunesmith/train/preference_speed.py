"""The packed, fused paths of dpo and rm (models/preference_speed.py), as trainer mixins.

`PackedDPO` replaces DPOTrainer's `_compute_loss` for the sigmoid loss on packed pairs: the
policy's and the reference's summed answer log-probabilities per sequence, then TRL's loss
(-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), averaged) and TRL's reward metrics.
`PackedReward` replaces RewardTrainer's `compute_loss` on packed pairs: TRL's
-log sigmoid(r_chosen - r_rejected) (+ its centring term) and its metrics. Where a setting is
outside what these compute (other losses, weighting, precomputed references, mixed precision,
an output layer that trains or rescales its logits, prompt-learning adapters), the trainers
keep TRL's own path: `packed_dpo_applies` and `packed_reward_applies` decide, before the
trainer is built (the collator is part of it).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from tunesmith.models.preference_speed import (
    PAIR_ATTENTION,
    PackedKTORows,
    PackedORPOPairs,
    PackedPairs,
    PackedRewardPairs,
    adapter_is_fresh,
    kl_row,
    packed_tokens,
    reward_head_supported,
    sequence_log_probs,
    sequence_rewards,
    use_pair_attention,
)
from tunesmith.models.speed import PACKED_ATTENTION, fused_loss_head, use_packed_attention
from tunesmith.train.arguments import cpu_autocast

REFERENCE_ADAPTER = "ref"  # TRL's frozen copy of a PEFT model's adapter


def _packed_attention(model) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) in (PACKED_ATTENTION, PAIR_ATTENTION)


def _lora_or_full(model) -> bool:
    from peft import LoraConfig

    configs = getattr(model, "peft_config", {})
    return all(type(c) is LoraConfig for c in configs.values())


def _speed_on(config, args) -> bool:
    return config.train.optimize and not cpu_autocast(config.train) and not (args.bf16 or args.fp16)


def packed_dpo_applies(config, model, args) -> bool:
    """Whether DPO with these DPOConfig `args` runs on packed pairs: train.optimize in fp32, the
    sigmoid loss alone with TRL's defaults around it, the packed attention applied to the model
    (models/speed.py) and a frozen fp32 output layer the fused log-probabilities can read."""
    plain_loss = (
        list(args.loss_type) == ["sigmoid"]
        and list(args.loss_weights or [1.0]) == [1.0]
        and args.f_divergence_type == "reverse_kl"
        and args.ld_alpha is None
        and not args.use_weighting
        and not args.precompute_ref_log_probs
        and not args.sync_ref_model
    )
    return (
        _speed_on(config, args)
        and plain_loss
        and _packed_attention(model)
        and _lora_or_full(model)
        and fused_loss_head(model) is not None
        and not getattr(model.config, "output_router_logits", False)
    )


def packed_kto_applies(config, model, args) -> bool:
    """Whether KTO runs on packed rows: train.optimize in fp32, TRL's kto loss (not
    apo_zero_unpaired) with the reference computed in the step, the packed attention applied and
    a frozen fp32 output layer."""
    return (
        _speed_on(config, args)
        and args.loss_type == "kto"
        and not args.precompute_ref_log_probs
        and _packed_attention(model)
        and _lora_or_full(model)
        and fused_loss_head(model) is not None
        and not getattr(model.config, "output_router_logits", False)
    )


def packed_orpo_applies(config, model, args) -> bool:
    """Whether ORPO runs on packed pairs: train.optimize in fp32, the packed attention applied
    and a frozen fp32 output layer for the fused log-probabilities, a decoder without MoE
    router losses."""
    return (
        _speed_on(config, args)
        and _packed_attention(model)
        and _lora_or_full(model)
        and fused_loss_head(model) is not None
        and not getattr(model.config, "output_router_logits", False)
        and not getattr(model.config, "is_encoder_decoder", False)
    )


def packed_reward_applies(config, model, args) -> bool:
    """Whether the reward model trains on packed pairs (train.optimize in fp32, a decoder with
    the one-output `score` head, the packed attention applied)."""
    return (
        _speed_on(config, args)
        and _packed_attention(model)
        and _lora_or_full(model)
        and reward_head_supported(model)
    )


class _Packed:
    """Shared by the packed trainers: tokens counted from the packed row, evaluation reports the
    loss alone (there are no logits to hand to compute_metrics)."""

    packed = False

    def _track_num_input_tokens(self, inputs):
        if not self.packed or "positions" not in inputs:
            return super()._track_num_input_tokens(inputs)
        if self.args.include_num_input_tokens_seen == "no":
            return None
        tokens = torch.as_tensor(packed_tokens(inputs), device=self.args.device)
        self.state.num_input_tokens_seen += self.accelerator.gather(tokens).sum().item()
        return None

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not self.packed or "positions" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        return self._packed_prediction(model, self._prepare_inputs(inputs))

    def _packed_prediction(self, model, inputs):
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _count_train_tokens(self, inputs, mode: str) -> None:
        # TRL's num_tokens metric: the real tokens trained so far
        if mode == "train":
            tokens = packed_tokens(inputs, with_kl=False)
            tokens = torch.as_tensor(tokens, device=self.accelerator.device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]


class _WithReference(_Packed):
    """The reference of dpo and kto: a separate ref_model, TRL's "ref" adapter, or (a fresh
    LoRA) the policy with its adapters disabled."""

    @staticmethod
    def attach(trainer) -> None:
        """Switch the built trainer to the packed path: drop TRL's "ref" adapter when it equals
        the base model (a fresh LoRA), so that the reference is the model with adapters off."""
        model = trainer.model
        if REFERENCE_ADAPTER in getattr(model, "peft_config", {}) and adapter_is_fresh(
            model, REFERENCE_ADAPTER
        ):
            model.delete_adapter(REFERENCE_ADAPTER)
        use_pair_attention(model)
        if trainer.ref_model is not None:
            use_packed_attention(trainer.ref_model)
            use_pair_attention(trainer.ref_model)
        trainer.packed = True

    def reference_context(self):
        """Where the policy model computes the reference: TRL's "ref" adapter if it is kept, else
        the adapters disabled (a PEFT model), else nothing (a separate ref_model is used)."""
        model = self.accelerator.unwrap_model(self.model)
        if self.ref_model is not None or not hasattr(model, "peft_config"):
            return contextlib.nullcontext()
        if REFERENCE_ADAPTER in model.peft_config:
            from trl.trainer.utils import use_adapter

            return use_adapter(model, adapter_name=REFERENCE_ADAPTER)
        return model.disable_adapter()

    def no_grad(self):
        """no_grad, with gradient checkpointing off meanwhile (as TRL's reference passes)."""
        from trl.models.utils import disable_gradient_checkpointing

        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        kwargs = self.args.gradient_checkpointing_kwargs
        stack.enter_context(disable_gradient_checkpointing(self.model, kwargs))
        return stack

    def reference_log_probs(self, inputs) -> torch.Tensor:
        model = self.ref_model if self.ref_model is not None else self.model
        head = fused_loss_head(model)
        with self.no_grad(), self.reference_context():
            return sequence_log_probs(model, head, inputs)[0]


class PackedDPO(_WithReference):
    """DPOTrainer mixin: the sigmoid DPO loss on packed pairs (see the module docstring)."""

    @staticmethod
    def collator(max_length: int | None) -> PackedPairs:
        return PackedPairs(max_length)

    def _compute_loss(self, model, inputs, return_outputs):
        if not self.packed or "positions" not in inputs:
            return super()._compute_loss(model, inputs, return_outputs)
        mode = "train" if self.model.training else "eval"
        ref_logps = self.reference_log_probs(inputs)
        logps, _ = sequence_log_probs(model, fused_loss_head(model), inputs)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)  # the row is [chosen, rejected]
        ref_chosen_logps, ref_rejected_logps = ref_logps.chunk(2, dim=0)
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        delta_score = chosen_logratios - rejected_logratios
        loss = -F.logsigmoid(self.beta * delta_score).mean() * self.loss_weights[0]

        self._count_train_tokens(inputs, mode)
        metrics = self._metrics[mode]
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        gather = self.accelerator.gather
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        accuracies = (chosen_rewards > rejected_rewards).float()
        metrics["rewards/accuracies"].append(gather(accuracies).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        return (loss, None) if return_outputs else loss


class PackedKTO(_WithReference):
    """KTOTrainer mixin: the KTO loss on packed rows. TRL's arithmetic: the policy's summed
    answer log-probabilities (with gradient), the KL estimate from the KL completions (policy
    and reference under no_grad, clamped at 0), 1 - sigmoid(beta * (logratio - KL)) for the
    desirable and 1 - sigmoid(beta * (KL - logratio)) for the undesirable, weighted, averaged;
    its metrics, but for entropy and logits/* (never built by the fused layer)."""

    @staticmethod
    def collator(max_length: int | None) -> PackedKTORows:
        return PackedKTORows(max_length)

    def _compute_loss(self, model, inputs, return_outputs):
        if not self.packed or "positions" not in inputs:
            return super()._compute_loss(model, inputs, return_outputs)
        mode = "train" if self.model.training else "eval"
        head = fused_loss_head(model)
        labels = inputs["label"].bool()
        kl_batch = kl_row(inputs) if self.calculate_KL else None
        kl = torch.zeros(1, device=self.accelerator.device)
        if kl_batch is not None:
            with self.no_grad():
                kl_logps = sequence_log_probs(model, head, kl_batch)[0]
            ref_kl_logps = self.reference_log_probs(kl_batch)
            kl = (kl_logps - ref_kl_logps).mean().detach()
            kl = self.accelerator.gather_for_metrics(kl).mean().clamp(min=0)
        ref_logps = self.reference_log_probs(inputs)
        logps = sequence_log_probs(model, head, inputs)[0]
        chosen_logps, rejected_logps = logps[labels], logps[~labels]
        chosen_logratios = chosen_logps - ref_logps[labels]
        rejected_logratios = rejected_logps - ref_logps[~labels]
        chosen_losses = 1 - torch.sigmoid(self.beta * (chosen_logratios - kl))
        rejected_losses = 1 - torch.sigmoid(self.beta * (kl - rejected_logratios))
        losses = torch.cat(
            (self.desirable_weight * chosen_losses, self.undesirable_weight * rejected_losses), 0
        )
        loss = losses.nanmean()

        metrics = self._metrics[mode]
        metrics["kl"].append(kl.item())
        self._count_train_tokens(inputs, mode)
        gather = self.accelerator.gather_for_metrics
        num_chosen = gather(labels.sum()).sum().item()
        num_rejected = gather((~labels).sum()).sum().item()
        if num_chosen > 0:
            rewards = (self.beta * chosen_logratios.detach()).nansum()
            metrics["rewards/chosen"].append(gather(rewards).nansum().item() / num_chosen)
            chosen_sum = chosen_logps.detach().nansum()
            metrics["logps/chosen"].append(gather(chosen_sum).nansum().item() / num_chosen)
        if num_rejected > 0:
            rewards = (self.beta * rejected_logratios.detach()).nansum()
            metrics["rewards/rejected"].append(gather(rewards).nansum().item() / num_rejected)
            rejected_sum = rejected_logps.detach().nansum()
            metrics["logps/rejected"].append(gather(rejected_sum).nansum().item() / num_rejected)
        if num_chosen > 0 and num_rejected > 0:
            margin = metrics["rewards/chosen"][-1] - metrics["rewards/rejected"][-1]
            metrics["rewards/margins"].append(margin)
        return (loss, None) if return_outputs else loss


class PackedORPO(_Packed):
    """ORPOTrainer mixin: ORPO's loss on packed pairs. TRL's arithmetic: the chosen NLL (mean
    over every chosen token), the answers' mean log-probabilities, its odds-ratio term, loss =
    NLL - mean(beta * log sigmoid(log odds)); its metrics, but for logits/chosen and
    logits/rejected (the means of logits the fused layer never builds)."""

    @staticmethod
    def collator() -> PackedORPOPairs:
        return PackedORPOPairs()

    @staticmethod
    def attach(trainer) -> None:
        use_pair_attention(trainer.model)  # pairs share their prompt in the packed row
        trainer.packed = True

    def orpo_log_probs(self, model, batch) -> tuple:
        """(the chosen NLL: mean over every chosen token, each chosen answer's mean
        log-probability, each rejected answer's), as TRL's concatenated_forward returns them."""
        _, per_token = sequence_log_probs(model, fused_loss_head(model), batch)
        segments, answer = batch["segments"], batch["answer"]
        n = int(batch["num_sequences"])
        nll = -per_token[segments < n // 2].mean()
        sums = per_token.new_zeros(n).index_add(0, segments[answer], per_token[answer])
        counts = per_token.new_zeros(n).index_add(
            0, segments[answer], torch.ones_like(per_token[answer])
        )
        chosen_logps, rejected_logps = (sums / counts).chunk(2)
        return nll, chosen_logps, rejected_logps

    def _packed_prediction(self, model, inputs):
        # as ORPOTrainer.prediction_step: its eval metrics stored, the loss alone returned
        with torch.no_grad():
            loss, metrics = self.get_batch_loss_metrics(model, inputs, train_eval="eval")
        self.store_metrics(metrics, train_eval="eval")
        return loss.detach(), None, None

    def get_batch_loss_metrics(self, model, batch, train_eval="train"):
        if not self.packed or "positions" not in batch:
            return super().get_batch_loss_metrics(model, batch, train_eval)
        nll, chosen_logps, rejected_logps = self.orpo_log_probs(model, batch)
        losses, chosen_rewards, rejected_rewards, log_odds_ratio, log_odds_chosen = (
            self.odds_ratio_loss(chosen_logps, rejected_logps)
        )
        loss = nll - losses.mean()
        gather = self.accelerator.gather_for_metrics
        prefix = "eval_" if train_eval == "eval" else ""
        metrics = {
            "rewards/chosen": gather(chosen_rewards).mean(),
            "rewards/rejected": gather(rejected_rewards).mean(),
            "rewards/accuracies": gather((chosen_rewards > rejected_rewards).float()).mean(),
            "rewards/margins": gather(chosen_rewards - rejected_rewards).mean(),
            "logps/rejected": gather(rejected_logps).detach().mean(),
            "logps/chosen": gather(chosen_logps).detach().mean(),
            "nll_loss": gather(nll).detach().mean(),
            "log_odds_ratio": gather(log_odds_ratio).detach().mean(),
            "log_odds_chosen": gather(log_odds_chosen).detach().mean(),
        }
        return loss, {f"{prefix}{k}": v.item() for k, v in metrics.items()}


class PackedReward(_Packed):
    """RewardTrainer mixin: the pairwise reward loss on packed pairs (see the module docstring)."""

    @staticmethod
    def collator(pad_token_id: int | None, max_length: int | None) -> PackedRewardPairs:
        return PackedRewardPairs(pad_token_id, max_length)

    @staticmethod
    def attach(trainer) -> None:
        use_pair_attention(trainer.model)  # pairs share their prompt in the packed row
        trainer.packed = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.packed or "positions" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        rewards = sequence_rewards(model, inputs)
        rewards_chosen, rewards_rejected = rewards.chunk(2)
        loss = -F.logsigmoid(rewards_chosen - rewards_rejected).mean()
        if self.args.center_rewards_coefficient is not None:
            centred = torch.mean((rewards_chosen + rewards_rejected) ** 2)
            loss = loss + self.args.center_rewards_coefficient * centred

        self._count_train_tokens(inputs, mode)
        metrics = self._metrics[mode]
        with torch.no_grad():
            every = self.accelerator.gather(rewards)
            metrics["min_reward"].append(every.min().item())
            metrics["mean_reward"].append(every.mean().item())
            metrics["max_reward"].append(every.max().item())
            accuracy = (rewards_chosen > rewards_rejected).float().mean()
            metrics["accuracy"].append(self.accelerator.gather_for_metrics(accuracy).mean().item())
            margin = (rewards_chosen - rewards_rejected).mean()
            metrics["margin"].append(self.accelerator.gather_for_metrics(margin).mean().item())
        return (loss, None) if return_outputs else loss
