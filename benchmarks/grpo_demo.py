"""GRPO demo on CPU: the embedded SmolLM2-135M-Instruct learns short arithmetic word problems
(issue 26).

The data is written here: word problems with one addition, subtraction or small product
("Mia has 7 apples. She buys 5 more. How many apples does she have now? Answer with just the
number."), --train prompts for training and --held-out others. The rewards are the built-in
`numeric` (the GSM8K scoring of `tunesmith eval`: 1 when the reply's last number is the answer)
and `length` (target 24 characters, weight 0.2: short replies). LoRA r 16 on all linear layers,
dropout 0, lr 2e-4 constant, 4 completions per prompt, 2 prompts per step (batch 8), 24 new
tokens at temperature 0.8, loss dapo, beta 0 (no reference), --steps steps, train.stage=grpo
through `tunesmith.train.run_stage`, torch on --threads threads (1: the fastest on this
project's shared 2-core hosts).

Held-out accuracy (greedy, 32 new tokens, the numeric reward) is measured on the base model
before and on the trained run after; the training reward per step is read from the run's
metrics.jsonl and drawn into --plot.

    .venv/bin/python benchmarks/grpo_demo.py [--steps 30] [--train 64] [--held-out 40]
        [--out DIR] [--plot docs/rl/grpo-demo-reward.png] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

NAMES = ["Mia", "Tom", "Ana", "Leo", "Sara", "Ben", "Lily", "Omar"]
THINGS = ["apples", "pencils", "stickers", "marbles", "cookies", "books"]


def problem(rng: random.Random) -> tuple[str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.choice(["add", "sub", "mul"])
    if kind == "add":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        text = f"{name} has {a} {thing}. {name} gets {b} more. How many {thing} now?"
        answer = a + b
    elif kind == "sub":
        a = rng.randint(8, 30)
        b = rng.randint(1, a - 1)
        text = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?"
        answer = a - b
    else:
        a, b = rng.randint(2, 6), rng.randint(2, 6)
        text = f"{name} has {a} bags with {b} {thing} in each bag. How many {thing} in all?"
        answer = a * b
    return f"{text} Answer with just the number.", answer


def write_data(folder: Path, n_train: int, n_held: int, seed: int) -> tuple[Path, list[dict]]:
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n_train + n_held:
        text, answer = problem(rng)
        if text not in seen:
            seen.add(text)
            rows.append({"prompt": text, "answer": str(answer)})
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]), encoding="utf-8")
    return train, rows[n_train:]


def accuracy(engine, held: list[dict]) -> float:
    from tunesmith.models.engine import GenerationParams
    from tunesmith.train.reward_functions import numeric

    conversations = [[{"role": "user", "content": r["prompt"]}] for r in held]
    replies = engine.generate(conversations, GenerationParams(max_new_tokens=32))
    scores = numeric(None, [c.text for c in replies], answer=[r["answer"] for r in held])
    return sum(scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/tunesmith-grpo-demo")
    parser.add_argument("--plot", default="docs/rl/grpo-demo-reward.png")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from tunesmith.config.load import load_config
    from tunesmith.models.engine import TransformersEngine
    from tunesmith.runs.folder import RunFolder
    from tunesmith.runs.inference import load_for_inference
    from tunesmith.train import run_stage

    torch.set_num_threads(args.threads)  # 1: fastest on a shared, loaded 2-core host
    out = Path(args.out)
    train_file, held = write_data(out / "data", args.train, args.held_out, args.seed)
    overrides = [
        f"data.train=[{train_file}]",
        "data.cutoff_len=256",
        f"output.dir={out / 'runs'}",
        "output.name=grpo",
        "output.overwrite=true",
        "train.stage=grpo",
        "method.r=16",
        "method.alpha=32",
        "method.dropout=0",
        "train.learning_rate=2e-4",
        "train.lr_scheduler=constant",
        "train.batch_size=8",
        f"train.max_steps={args.steps}",
        "train.save_steps=1000",
        f"train.seed={args.seed}",
        "train.grpo.num_generations=4",
        "train.grpo.max_completion_length=24",
        "train.grpo.temperature=0.8",
        "train.grpo.rewards=[{name: numeric}, {name: length, target: 24, weight: 0.2}]",
    ]
    config = load_config(None, overrides)

    started = time.perf_counter()
    base, tokenizer = load_for_inference(None, config.model)
    before = accuracy(TransformersEngine(base, tokenizer, batch_size=20), held)
    del base
    eval_seconds = time.perf_counter() - started

    started = time.perf_counter()
    result = run_stage(config, RunFolder.create(config.output, "benchmark"), False)
    train_seconds = time.perf_counter() - started

    tuned, tokenizer = load_for_inference(result.run.root)
    after = accuracy(TransformersEngine(tuned, tokenizer, batch_size=20), held)

    steps = [
        json.loads(line)
        for line in (result.run.root / "metrics.jsonl").read_text().splitlines()
        if '"reward"' in line
    ]
    curve = [(m["step"], m["reward"], m.get("rewards/numeric/mean")) for m in steps]
    report = {
        "steps": args.steps,
        "held_out_accuracy_before": round(before, 4),
        "held_out_accuracy_after": round(after, 4),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds_base": round(eval_seconds, 1),
        "reward_first5": round(sum(r for _, r, _ in curve[:5]) / 5, 4),
        "reward_last5": round(sum(r for _, r, _ in curve[-5:]) / 5, 4),
        "numeric_first5": round(sum(n for _, _, n in curve[:5]) / 5, 4),
        "numeric_last5": round(sum(n for _, _, n in curve[-5:]) / 5, 4),
        "curve": curve,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__},
    }
    print(json.dumps({k: v for k, v in report.items() if k != "curve"}, indent=2))
    for step, reward, correct in curve:
        print(f"step {step:3d}  reward {reward:.3f}  numeric {correct:.3f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
        xs = [s for s, _, _ in curve]
        ax.plot(xs, [r for _, r, _ in curve], label="reward (numeric + 0.2 x length)")
        ax.plot(xs, [n for _, _, n in curve], label="numeric (share correct)")
        ax.set_xlabel("step")
        ax.set_ylabel("mean over 8 completions")
        ax.set_title("GRPO on SmolLM2-135M-Instruct, CPU")
        ax.legend(fontsize=8)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot)


if __name__ == "__main__":
    main()
