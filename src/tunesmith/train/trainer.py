"""The Trainer every causal-LM stage uses: the loss is computed from trained positions only.

A causal LM's output layer maps every position to the whole vocabulary (49k columns for
SmolLM2); on chat data most positions are prompt tokens whose logits are thrown away by the
loss mask. Asking the model for the logits of the positions whose next token is trained
(`logits_to_keep` with explicit indices) skips that work and its memory, with the same loss.
With `fused_loss` (train.optimize) the output layer and the loss run together in cache-sized
chunks of the vocabulary (models/speed.py), so even those logits are never held in memory.

Forgetting control (train/forgetting.py) hooks in here: the L2-SP penalty is added to the
training loss and logged as `l2_penalty`; layer-wise lr decay shapes the optimizer's groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer

from tunesmith.data.dataset import PackedCollator, SFTCollator, build_sft_data
from tunesmith.data.render import IGNORE_INDEX
from tunesmith.models.methods import lora, virtual_tokens
from tunesmith.models.speed import fused_loss_head, head_returns_hidden_states, linear_cross_entropy
from tunesmith.train.arguments import training_arguments
from tunesmith.train.checkpoints import AtomicCheckpoints
from tunesmith.train.forgetting import L2ToPretrained, add_replay, layerwise_param_groups
from tunesmith.train.recipe import Data, Recipe
from tunesmith.utils.errors import ConfigError


class SequenceTokens:
    """Trainer mixin for batches of several sequences (TRL's chosen / rejected / KL columns).

    transformers counts the tokens of `input_ids` only, which ORPO's and CPO's batches lack, so
    their tokens/s was 0. Here every attention mask of a sequence the model reads counts; the
    prompt-only columns are inside those sequences already.
    """

    def _track_num_input_tokens(self, inputs):
        masks = [
            v
            for k, v in inputs.items()
            if k.endswith("attention_mask") and not k.startswith("prompt_")
        ]
        if self.args.include_num_input_tokens_seen == "no" or not masks:
            return super()._track_num_input_tokens(inputs)
        tokens = sum(mask.sum() for mask in masks)
        tokens = torch.as_tensor(tokens, device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += self.accelerator.gather(tokens).sum().item()


# What CausalLMTrainer's loss implements and the TRL trainers and the distillation loss lack:
# the L2-to-pretrained term, and early stopping is checked against TRL's reference adapter.
NO_LOSS_HOOKS = ("early_stopping", "l2_to_pretrained")


class CausalLMTrainer(AtomicCheckpoints, Trainer):
    # compute_loss divides by the tokens of the whole accumulated batch
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args,
        l2_to_pretrained: float = 0.0,
        layerwise_lr_decay: float = 1.0,
        loraplus_lr_ratio: float | None = None,
        fused_loss: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        # the output layer when the fused loss applies to it (else the plain cross-entropy)
        self.fused_head = fused_loss_head(self.model) if fused_loss else None
        self.layerwise_lr_decay = layerwise_lr_decay
        self.loraplus_lr_ratio = loraplus_lr_ratio
        if loraplus_lr_ratio and layerwise_lr_decay != 1.0:
            raise ConfigError(
                "method.loraplus_lr_ratio and train.layerwise_lr_decay both set the learning "
                "rates of the optimizer's groups; use one of them"
            )
        # prompt / p-tuning put virtual tokens first: their logits come before the input's
        self.virtual_tokens = virtual_tokens(self.model)
        self.l2 = None
        if l2_to_pretrained:
            if self.is_fsdp_enabled or self.is_deepspeed_enabled:
                raise ConfigError("train.l2_to_pretrained: not supported with FSDP or DeepSpeed")
            # Taken now: the model is on its device, and a resumed checkpoint is only loaded in
            # train(), so the anchor is the pretrained weights on every start.
            self.l2 = L2ToPretrained(self.model, l2_to_pretrained)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        targets = labels[:, 1:]  # position t predicts token t + 1
        positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
        # No KV cache in training: with one, transformers ignores packed position ids and lets
        # packed examples attend to each other.
        kept = positions + self.virtual_tokens
        picked = targets[:, positions].flatten()
        head = self.fused_head if model.training and not return_outputs else None
        if head is not None:
            with head_returns_hidden_states(head):
                outputs = model(**inputs, logits_to_keep=kept, use_cache=False)
            hidden = outputs.logits.flatten(0, 1)
            loss = linear_cross_entropy(hidden, head.weight, picked, IGNORE_INDEX)
        else:
            outputs = model(**inputs, logits_to_keep=kept, use_cache=False)
            logits = outputs.logits.float().flatten(0, 1)
            loss = F.cross_entropy(logits, picked, ignore_index=IGNORE_INDEX, reduction="sum")
        if num_items_in_batch is None:
            num_items_in_batch = (picked != IGNORE_INDEX).sum()
        elif self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device).clamp(min=1)
        if self.l2 is not None and model.training:  # eval losses stay the task's alone
            # once per optimizer step: the accumulated micro-batches share it
            loss = loss + self.l2() / getattr(self, "current_gradient_accumulation_steps", 1)
        return (loss, outputs) if return_outputs else loss

    def floating_point_ops(self, inputs) -> int:
        # the Trainer's estimate (6 x tokens x non-embedding parameters), the parameters counted
        # once instead of by walking the whole model at every step
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if not hasattr(self, "_non_embedding_parameters"):
            self._non_embedding_parameters = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main_input].numel() * self._non_embedding_parameters

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.l2 is not None and "loss" in logs:
            logs["l2_penalty"] = self.l2.mean_since_last_log()  # per step; included in loss
        super().log(logs, start_time)

    def create_optimizer(self, model=None):
        plain = self.layerwise_lr_decay == 1.0 and not self.loraplus_lr_ratio
        if plain or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        if self.loraplus_lr_ratio:
            self.optimizer = lora.loraplus_optimizer(
                model, optimizer_cls, kwargs, self.loraplus_lr_ratio, self.args.weight_decay
            )
            return self.optimizer
        groups = layerwise_param_groups(
            model,
            self.args.learning_rate,
            self.layerwise_lr_decay,
            self.args.weight_decay,
            set(self.get_decay_parameter_names(model)),  # no decay for biases and norms
        )
        self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer


def causal_lm_recipe(name: str, read, data, **more) -> Recipe:
    """A stage trained by CausalLMTrainer on tokenized chat or text: it reads train.packing
    and the speed levers apply (sft, pt, sequence-level distillation)."""
    return Recipe(
        name=name, read=read, data=data, trainer=causal_lm_trainer, packs=True, speed=True, **more
    )


def causal_lm_trainer(job) -> CausalLMTrainer:
    """The trainer of sft, pt and sequence-level distillation on a recipe's Job (train/recipe)."""
    cfg, data, tokenizer = job.config.train, job.data, job.loaded.tokenizer
    return CausalLMTrainer(
        model=job.model,
        args=training_arguments(cfg, job.run, has_eval=data.eval is not None),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=PackedCollator() if cfg.packing else SFTCollator(tokenizer.pad_token_id),
        l2_to_pretrained=cfg.l2_to_pretrained,
        layerwise_lr_decay=cfg.layerwise_lr_decay,
        loraplus_lr_ratio=getattr(job.config.method, "loraplus_lr_ratio", None),
        fused_loss=cfg.optimize,
    )


def chat_data(job) -> Data:
    """Chat examples of job.sources = (sources, replay sources), with data.eval's (sft, and
    distillation on the teacher's answers)."""
    config, run, tokenizer = job.config, job.run, job.loaded.tokenizer
    sources, replay = job.sources
    train_data = build_sft_data(sources, config.data, tokenizer, run.reject)
    train_data = add_replay(
        train_data, replay, config.data, config.train.seed, tokenizer, run.reject
    )
    held_out = None
    if config.data.eval:
        held_out = build_sft_data(config.data.eval, config.data, tokenizer, run.reject)
    return Data.of(train_data, held_out)
