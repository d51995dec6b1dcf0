"""Speed and footprint: latency per request, generated tokens/s, peak memory, size on disk.

Requests are timed one at a time after a warm-up request (the first call pays for lazy
initialisation), so p50 / p95 are what a single user waits. The seeds' PerformanceTester timed
forward passes only, without warm-up or CUDA synchronisation; this times whole replies.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Files holding weights (tokenizers, configs and optimizer states are not the model's size).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def measure_speed(
    engine,
    conversations: list[list[dict]],
    params,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    label: str | None = None,
) -> dict:
    """Latency p50 / p95 / mean (seconds per request) and generated tokens per second."""
    if not conversations:
        raise ValueError("measure_speed needs at least one conversation")
    for conversation in conversations[:warmup]:
        engine.generate([conversation], params)
    _reset_cuda_peak()
    latencies, tokens = [], 0
    timed = conversations
    if label:  # a progress bar on stderr
        from tunesmith.evaluation.context import tracked

        timed = tracked(label, conversations, len(conversations))
    for conversation in timed:
        start = clock()
        completion = engine.generate([conversation], params)[0]
        latencies.append(clock() - start)
        tokens += completion.completion_tokens
    total = sum(latencies)
    return {
        "requests": len(latencies),
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p95_s": float(np.percentile(latencies, 95)),
        "latency_mean_s": total / len(latencies),
        "generated_tokens": tokens,
        "tokens_per_s": tokens / total if total > 0 else None,
        "peak_rss_mb": peak_rss_mb(),
        "cuda_peak_mb": cuda_peak_mb(),
    }


def peak_rss_mb() -> float | None:
    """The process's peak resident memory so far (MB); None where the OS does not say."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KB else


def cuda_peak_mb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 1024**2


def _reset_cuda_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def size_on_disk(*paths: str | Path | None) -> int:
    """Bytes of the weight files in the given folders (or files); tokenizers etc. excluded."""
    total = 0
    for path in filter(None, paths):
        path = Path(path)
        files = [path] if path.is_file() else path.rglob("*") if path.is_dir() else []
        total += sum(f.stat().st_size for f in files if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    return total
