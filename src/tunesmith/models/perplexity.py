"""Perplexity: exp of the mean next-token negative log-likelihood over a set of texts.

The mean is over all scored tokens of all texts together (not a mean of per-text
perplexities), so a long text weighs by its length, as in the training loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.data.render import IGNORE_INDEX
from tunesmith.utils.errors import DataError


@dataclass
class Perplexity:
    perplexity: float
    mean_nll: float
    tokens: int  # tokens scored (each text's first token has no prediction)
    documents: int
    truncated: int  # texts cut to max_length tokens


def perplexity(
    model, tokenizer, texts: Sequence[str], max_length: int = 512, batch_size: int = 4
) -> Perplexity:
    """Score `texts` (each cut to its first max_length tokens), batched, without gradients."""
    encoded = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    ids = [x[:max_length] for x in encoded]
    ids.sort(key=len, reverse=True)  # similar lengths share a batch: less padding
    was_training = model.training
    model.eval()  # no dropout
    try:
        with torch.no_grad():
            sums = [
                _batch_nll(model, ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)
            ]
    finally:
        model.train(was_training)
    nll, tokens = sum(s for s, _ in sums), sum(n for _, n in sums)
    if tokens == 0:
        raise DataError("perplexity: no text has two tokens or more; nothing to score")
    truncated = sum(len(x) > max_length for x in encoded)
    return Perplexity(math.exp(nll / tokens), nll / tokens, tokens, len(ids), truncated)


def _batch_nll(model, batch: list[list[int]]) -> tuple[float, int]:
    """(sum of next-token NLL, tokens scored) of right-padded texts."""
    device = next(model.parameters()).device
    width = max(len(x) for x in batch)
    input_ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, x in enumerate(batch):
        input_ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
    targets = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
    nll = F.cross_entropy(
        logits[:, :-1].float().flatten(0, 1),
        targets.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return nll.item(), int((targets != IGNORE_INDEX).sum())
