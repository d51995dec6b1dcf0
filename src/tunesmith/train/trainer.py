"""The Trainer every causal-LM stage uses: the loss is computed from trained positions only.

A causal LM's output layer maps every position to the whole vocabulary (49k columns for
SmolLM2); on chat data most positions are prompt tokens whose logits are thrown away by the
loss mask. Asking the model for the logits of the positions whose next token is trained
(`logits_to_keep` with explicit indices) skips that work and its memory, with the same loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer

from tunesmith.data.render import IGNORE_INDEX


class CausalLMTrainer(Trainer):
    loss_is_scaled_for_ga = (
        True  # compute_loss divides by the tokens of the whole accumulated batch
    )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        targets = labels[:, 1:]  # position t predicts token t + 1
        positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
        # No KV cache in training: with one, transformers ignores packed position ids and lets
        # packed examples attend to each other.
        outputs = model(**inputs, logits_to_keep=positions, use_cache=False)
        picked = targets[:, positions]
        loss = F.cross_entropy(
            outputs.logits.float().flatten(0, 1),
            picked.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        if num_items_in_batch is None:
            num_items_in_batch = (picked != IGNORE_INDEX).sum()
        elif self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device).clamp(min=1)
        return (loss, outputs) if return_outputs else loss
