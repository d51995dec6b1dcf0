"""SDPA's CPU kernels on one example's attention shapes in tunesmith's packed SFT step
(SmolLM2-135M: 9 query / 3 key-value heads of 64, causal, fp32, 2 threads): forward and
backward milliseconds (median of 30) of the flash kernel (what SDPA picks), the math kernel,
and a plain matmul-softmax version, per example length.

    .venv/bin/python benchmarks/attention_kernels.py [--lengths 64,128,200,300,512]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, KV_HEADS, DIM = 9, 3, 64


def flash(q, k, v):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def math_sdpa(q, k, v):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def matmul_softmax(q, k, v):
    length, groups = q.shape[2], HEADS // KV_HEADS
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2)) * DIM**-0.5
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


def timed(attend, length: int, repeats: int = 30) -> tuple[float, float]:
    """Median forward and backward milliseconds (by their sum) after 3 warm-up rounds."""
    q = torch.randn(1, HEADS, length, DIM, requires_grad=True)
    k = torch.randn(1, KV_HEADS, length, DIM, requires_grad=True)
    v = torch.randn(1, KV_HEADS, length, DIM, requires_grad=True)
    grad = torch.randn(1, HEADS, length, DIM)
    for _ in range(3):
        attend(q, k, v).backward(grad)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = attend(q, k, v)
        middle = time.perf_counter()
        out.backward(grad)
        times.append((middle - start, time.perf_counter() - middle))
    forward, backward = sorted(times, key=sum)[repeats // 2]
    return forward * 1e3, backward * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="64,128,200,300,512")
    args = parser.parse_args()
    torch.set_num_threads(2)
    kernels = {"flash": flash, "math": math_sdpa, "matmul-softmax": matmul_softmax}
    print("| tokens | " + " | ".join(f"{name} fwd / bwd ms" for name in kernels) + " |")
    print("|---:|" + "---:|" * len(kernels))
    for length in map(int, args.lengths.split(",")):
        cells = [timed(attend, length) for attend in kernels.values()]
        print(f"| {length} | " + " | ".join(f"{f:.2f} / {b:.2f}" for f, b in cells) + " |")


if __name__ == "__main__":
    main()
