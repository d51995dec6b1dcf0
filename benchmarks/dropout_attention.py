"""Attention with dropout on the CPU: SDPA (its math path: the flash kernel has no dropout)
against models/dropout_attention.py's cache-sized groups, and SDPA without dropout (its flash
kernel) for scale. Forward + backward of one layer's attention, best of 3 after a warm-up.

    .venv/bin/python benchmarks/dropout_attention.py [--batch 8] [--length 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from tunesmith.models.dropout_attention import dropout_attention

HEADS, HEAD_DIM, DROPOUT = 12, 32, 0.1  # MiniLM-L6's attention


def timed(attention, batch: int, length: int) -> float:
    q, k, v = (torch.randn(batch, HEADS, length, HEAD_DIM, requires_grad=True) for _ in range(3))
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[..., length - length // 16 :] = False  # some padding, as a padded batch has
    times = []
    for _ in range(4):
        started = time.perf_counter()
        attention(q, k, v, mask).sum().backward()
        times.append(time.perf_counter() - started)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale = HEAD_DIM**-0.5
    runs = {
        "sdpa, dropout 0.1": lambda q, k, v, m: F.scaled_dot_product_attention(
            q, k, v, attn_mask=m, dropout_p=DROPOUT
        ),
        "grouped, dropout 0.1": lambda q, k, v, m: dropout_attention(q, k, v, m, DROPOUT, scale),
        "sdpa, no dropout": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
    }
    print(
        f"batch {args.batch} x {HEADS} heads x {args.length} x {HEAD_DIM}, {args.threads} threads"
    )
    for name, attention in runs.items():
        print(f"{name}: {timed(attention, args.batch, args.length):.3f} s")


if __name__ == "__main__":
    main()
