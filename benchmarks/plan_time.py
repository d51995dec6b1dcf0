"""How close the planner's time is to the run's: plan a classification run, train it, compare.

    .venv/bin/python benchmarks/plan_time.py [--per-class 300] [--repeats 2] [--out DIR]

The data is benchmarks/cls_data.py's 5-class real-text set (variable lengths, about a quarter
over MiniLM's 512 tokens); the run is the README's classification example: `minilm-l6`, LoRA,
batch 16, one epoch, a 10% validation split. Each repeat runs in a fresh process: `make_plan`
(probe included), then the training run; the measured time is summary.json's `seconds` (the
whole run: data read and tokenized, model loaded, training steps, evaluations, report, save),
which is what the planner estimates for stage cls. Prints one JSON line per repeat and the
load average around it (the machine may be shared: other processes slow the run, not the plan).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cls_data  # beside this file (benchmarks/ is no package)


def config_for(train: Path, out: Path, name: str):
    from tunesmith.config.schema import RunConfig

    return RunConfig.model_validate(
        {
            "model": {"name_or_path": "minilm-l6"},
            "method": {"type": "lora"},
            "data": {"train": [str(train)]},
            "train": {"stage": "cls", "batch_size": 16, "epochs": 1, "learning_rate": 2e-4},
            "output": {"dir": str(out), "name": name},
        }
    )


def one(train: Path, out: Path, name: str) -> dict:
    """Plan, then train, in this process."""
    import torch

    from tunesmith.plan.planner import make_plan
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train import run_stage

    config = config_for(train, out, name)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    plan = make_plan(config)
    planning = time.perf_counter() - started
    result = run_stage(config, RunFolder.create(config.output, name))
    measured = result.summary["seconds"]
    predicted = plan.time.seconds
    return {
        "stage": "cls",
        "model": "minilm-l6",
        "method": "lora",
        "records": plan.data.records,
        "steps": result.summary["steps"],
        "predicted_s": round(predicted, 1),
        "parts_s": {k: round(v, 1) for k, v in (plan.time.parts or {}).items()},
        "measured_s": measured,
        "ratio": round(predicted / measured, 3),
        "plan_s": round(planning, 1),
        "time_method": plan.time.method,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", nargs=3, metavar=("TRAIN", "OUT", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        train, out, name = args.one
        print("RESULT " + json.dumps(one(Path(train), Path(out), name)), flush=True)
        return
    if not cls_data.available():
        raise SystemExit(f"{cls_data.SHARED}: LLaMA-Factory's demo data is not there")
    out = args.out or Path(tempfile.mkdtemp(prefix="plan_time_"))
    built = cls_data.build(out / "data", per_class=args.per_class)
    print(f"# {platform.processor() or platform.machine()}, data {json.dumps(built)}", flush=True)
    for repeat in range(args.repeats):
        command = [sys.executable, __file__, "--one", built["train"], str(out), f"run{repeat}"]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise SystemExit(done.stderr[-3000:])
        print(lines[-1].removeprefix("RESULT "), flush=True)


if __name__ == "__main__":
    main()
