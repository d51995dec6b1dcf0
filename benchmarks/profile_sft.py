"""Where tunesmith's SFT time goes: cProfile around `train()` of the throughput benchmark's
tunesmith-fast run (same job as benchmarks/train_throughput.py: SmolLM2-135M, LoRA r8 all-linear,
packed, cutoff 512, batch 4, fp32, 2 threads).

    .venv/bin/python benchmarks/profile_sft.py [--records 40] [--top 45] [--ops]

Prints train()'s wall time and the functions by cumulative time: the share of training_step,
of the frozen linears' kernel (speed.py `_times_transposed`), of the fused loss, of attention.
With --ops, torch.profiler's table of operators by self CPU time instead: it splits what
cProfile sees as the autograd engine's own work (attention backward, elementwise backward).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput  # beside this file (benchmarks/ is no package)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--ops", action="store_true", help="torch.profiler, by operator")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(train_throughput.THREADS)
    import tunesmith.train.sft as sft
    from tunesmith.config.load import load_config
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train.trainer import CausalLMTrainer

    trainer_cls, original = CausalLMTrainer, CausalLMTrainer.train
    profile = torch.profiler.profile() if args.ops else cProfile.Profile()
    start, stop = (profile.start, profile.stop) if args.ops else (profile.enable, profile.disable)

    def profiled(self, *a, **k):
        started = time.perf_counter()
        start()
        try:
            return original(self, *a, **k)
        finally:
            stop()
            print(f"train(): {time.perf_counter() - started:.1f} s", flush=True)

    trainer_cls.train = profiled
    with tempfile.TemporaryDirectory() as out:
        overrides = train_throughput.tunesmith_overrides(args.records, True, out)
        overrides += train_throughput.speed_overrides(True, False)
        config = load_config(None, overrides)
        sft.run_sft(config, RunFolder.create(config.output, "profile"))
    if args.ops:
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    else:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
