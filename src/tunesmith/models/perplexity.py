"""Perplexity: exp of the mean next-token negative log-likelihood over a set of texts.

The mean is over all scored tokens of all texts together (not a mean of per-text
perplexities), so a long text weighs by its length, as in the training loss.
"""

from __future__ import annotations

import inspect
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
                pair
                for i in range(0, len(ids), batch_size)
                for pair in padded_nll(model, [(x, x) for x in ids[i : i + batch_size]])
            ]
    finally:
        model.train(was_training)
    nll, tokens = sum(s for s, _ in sums), sum(n for _, n in sums)
    if tokens == 0:
        raise DataError("perplexity: no text has two tokens or more; nothing to score")
    truncated = sum(len(x) > max_length for x in encoded)
    return Perplexity(math.exp(nll / tokens), nll / tokens, tokens, len(ids), truncated)


def padded_nll(
    model, rows: Sequence[tuple[list[int], list[int]]], pad_id: int = 0, left: bool = False
) -> list[tuple[float, int]]:
    """(summed next-token NLL, tokens scored) of each row, all in one padded forward pass.

    A row is (input ids, labels): labels[i] is the token expected at i, IGNORE_INDEX where
    nothing is scored. The one scorer of perplexity, the eval runner's response NLL and the
    benchmarks' choice log-likelihood. Left padding (left=True) puts every row's end in the last
    column, so only the scored tail gets the vocabulary projection (most of the cost with a
    large vocabulary) when the model takes logits_to_keep. Call it under torch.no_grad()."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id or 0, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        start = width - len(ids) if left else 0
        input_ids[r, start : start + len(ids)] = torch.tensor(ids)
        labels[r, start : start + len(lab)] = torch.tensor(lab)
        mask[r, start : start + len(ids)] = 1
    device = next(model.parameters()).device
    extra = {}
    if left:
        extra["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        scored = (labels != IGNORE_INDEX).any(0).nonzero()
        if len(scored) and _accepts(model, "logits_to_keep"):
            extra["logits_to_keep"] = width - int(scored[0]) + 1  # from the first predicting one
    logits = model(
        input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False, **extra
    ).logits
    targets = labels[:, width - logits.shape[1] + 1 :].to(device)  # logits[:, i] predicts i + 1
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    counts = (targets != IGNORE_INDEX).sum(1)
    return [(float(s), int(n)) for s, n in zip(nll.sum(1).tolist(), counts.tolist(), strict=True)]


def _accepts(model, name: str) -> bool:
    forward = inspect.signature(model.forward).parameters
    return name in forward or any(p.kind is p.VAR_KEYWORD for p in forward.values())
