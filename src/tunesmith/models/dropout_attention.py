"""Attention with dropout on the CPU, a few heads at a time so the scores stay in cache.

PyTorch's CPU flash kernel has no dropout, so an encoder trained with attention dropout
(BERT-family classifiers: MiniLM's is 0.1) falls to SDPA's math path: per layer it writes the
whole batch x heads x L x L score, probability and dropout-mask tensors to memory, keeps them
for the backward, and reads them back, which at L = 512 costs about as much as the rest of the
layer. Here the same maths runs on a group of (example, head) slices at a time, small enough
for the CPU's cache: scores, softmax, the dropout mask and the product with V. Only the mask is
kept (as booleans, a quarter of a float mask); the backward recomputes each group's
probabilities from Q and K, as flash attention does. The dropout draws come from torch's
generator like any other dropout, but not in the same order as SDPA's, so a run with this path
matches a run without it in distribution, not bit for bit (with dropout 0 the two are equal).
"""

from __future__ import annotations

import torch

# slices per group: 4 x 512 x 512 floats = 4 MB of scores, inside the L2 + L3 a core sees
_GROUP_ELEMENTS = 1 << 20


def dropout_attention(query, key, value, mask, dropout: float, scale: float) -> torch.Tensor:
    """softmax(Q K^T * scale + mask) with dropout, times V; (batch, heads, L, d) tensors.
    mask: None, boolean (True = attend) or additive, broadcastable to (batch, heads, Lq, Lk)."""
    batch, heads, q_len, _ = query.shape
    bias = _additive(mask, query, (batch, heads, q_len, key.shape[2]))
    return _DropoutAttention.apply(query, key, value, bias, dropout, scale)


def _additive(mask, query, shape):
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=query.dtype, device=query.device)
        mask = bias.masked_fill_(~mask, torch.finfo(query.dtype).min)
    # one mask for every head (the usual padding mask) is broadcast per group, never copied
    return mask.to(query.dtype).expand(shape[0], -1, shape[2], shape[3])


def _groups(batch: int, heads: int, q_len: int, k_len: int):
    """(example, first head, last head) groups of about _GROUP_ELEMENTS scores each."""
    per_group = max(1, min(heads, _GROUP_ELEMENTS // max(1, q_len * k_len)))
    for b in range(batch):
        for h in range(0, heads, per_group):
            yield b, h, min(heads, h + per_group)


def _probabilities(q, k, bias, scale):
    scores = torch.matmul(q, k.transpose(-1, -2))
    if bias is None:
        scores.mul_(scale)
    else:
        scores = torch.add(bias, scores, alpha=scale)
    return torch.softmax(scores, dim=-1)


class _DropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, bias, dropout, scale):
        batch, heads, q_len, _ = query.shape
        k_len = key.shape[2]
        out = query.new_empty(batch, heads, q_len, value.shape[-1])
        keep = torch.empty(batch, heads, q_len, k_len, dtype=torch.bool, device=query.device)
        kept_scale = 1.0 / (1.0 - dropout)
        for b, h0, h1 in _groups(batch, heads, q_len, k_len):
            probs = _probabilities(query[b, h0:h1], key[b, h0:h1], _bias(bias, b, h0, h1), scale)
            group_keep = keep[b, h0:h1]
            group_keep.copy_(draw_keep(probs, dropout))
            probs.mul_(group_keep).mul_(kept_scale)
            torch.matmul(probs, value[b, h0:h1], out=out[b, h0:h1])
        ctx.save_for_backward(query, key, value, bias, keep)
        ctx.dropout, ctx.scale = dropout, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, bias, keep = ctx.saved_tensors
        scale, kept_scale = ctx.scale, 1.0 / (1.0 - ctx.dropout)
        grad_q, grad_k, grad_v = (torch.empty_like(t) for t in (query, key, value))
        batch, heads, q_len, _ = query.shape
        for b, h0, h1 in _groups(batch, heads, q_len, key.shape[2]):
            q, k, v, g = query[b, h0:h1], key[b, h0:h1], value[b, h0:h1], grad_out[b, h0:h1]
            probs = _probabilities(q, k, _bias(bias, b, h0, h1), scale)
            group_keep = keep[b, h0:h1]
            dropped = probs * group_keep
            dropped.mul_(kept_scale)
            torch.matmul(dropped.transpose(-1, -2), g, out=grad_v[b, h0:h1])
            # d(dropped) = g V^T; d(probs) = that * keep * kept_scale; softmax's backward
            grad_probs = torch.matmul(g, v.transpose(-1, -2))
            grad_probs.mul_(group_keep).mul_(kept_scale)
            row = (grad_probs * probs).sum(dim=-1, keepdim=True)
            grad_scores = grad_probs.sub_(row).mul_(probs).mul_(scale)
            torch.matmul(grad_scores, k, out=grad_q[b, h0:h1])
            torch.matmul(grad_scores.transpose(-1, -2), q, out=grad_k[b, h0:h1])
        return grad_q, grad_k, grad_v, None, None, None


def draw_keep(probs: torch.Tensor, dropout: float) -> torch.Tensor:
    """Which probabilities dropout keeps (True with probability 1 - dropout)."""
    return torch.rand_like(probs) >= dropout


def _bias(bias, b: int, h0: int, h1: int):
    if bias is None:
        return None
    return bias[b, h0:h1] if bias.shape[1] > 1 else bias[b, :1]
