"""Training throughput: tunesmith against a plain TRL `SFTTrainer` on the same tokens (issue 6).

The embedded SmolLM2-135M-Instruct with LoRA (rank 8, alpha 16, dropout 0, all linear layers),
the first N records of ../shared/data/llamafactory/alpaca_en_demo.json, cutoff 512, batch 4,
lr 1e-4 with a linear schedule and no warmup, one epoch, fp32 on the CPU with 2 threads, no
gradient checkpointing, loss on responses only. Each run in its own subprocess (so the peak RSS
is that run's): tunesmith packed and padded, TRL packed and padded
(benchmarks/trl_sft_baseline.py), and tunesmith packed with the speed levers of
models/speed.py: `tunesmith-fast` (per-example attention on packed rows, fused LoRA; same maths)
and `tunesmith-compiled` (the same plus torch.compile of the decoder layers; compile time counts,
as it falls inside `train()`); `tunesmith-bf16` is tunesmith-fast with train.precision=bf16 (the
Trainer's CPU autocast, the fused LoRA and loss multiplying in bf16 inside it) and
`tunesmith-auto` the same with train.precision=auto (the run records what models/precision.py
chose, and why).
`tunesmith-packed` is the path without those levers.

bf16 against fp32 (issue 20, item 3), each tool with its own bf16 flag on the same workload:
`tunesmith-bf16` against `tunesmith-fast`, `trl-bf16` (TRL's `bf16=True`, packed) against
`trl-packed`, `lf-neat-bf16` (LF's `bf16: true`) against `lf-neat`. Every run records each
optimizer step's loss; the report compares the two loss curves of each pair step by step (mean
and largest relative difference, the step of the largest, and the final loss):

    .venv/bin/python benchmarks/train_throughput.py --repeat 2 \\
        --runs tunesmith-fast,tunesmith-bf16,trl-packed,trl-bf16,lf-neat,lf-neat-bf16

LLaMA-Factory (issue 20, item 1; benchmarks/lf_baseline.py): `lf-neat` (`neat_packing: true`:
packed rows with a block-diagonal mask and per-example positions, the same maths as the packed
runs above) and `lf-padded` (no packing). LF pins its own versions of transformers, peft and trl,
so it runs in its own virtualenv, installed on first use under
~/.cache/tunesmith/bench/lf-venv (or --lf-venv DIR; never into the project's .venv) with the
same torch as the project's venv and the pins of LF_PINS, and reused while its marker file names
the same pins. The run starts from the same model folder (the parent resolves the embedded
SmolLM2 and passes the folder) and the same records. Every run's real and trainable token counts
must equal the first run's: the benchmark stops with an error otherwise.

Measured the same way for every run: tokens/s = real (non-pad) tokens / wall time around the
trainer's `train()` call (model loading and data preparation excluded); peak RSS = the child's
own ru_maxrss; final loss = the trainer's `training_loss` (mean over the epoch). Real tokens:
tunesmith's summary.json["data"]["tokens"], TRL's prepared dataset; both are printed with the
trainable (response) token counts so one can see that both tools train on the same tokens.

    .venv/bin/python benchmarks/train_throughput.py [--records 200]
        [--runs tunesmith-fast,tunesmith-packed,tunesmith-padded,trl-packed,trl-padded,
                lf-neat,lf-padded,tunesmith-bf16,tunesmith-auto,trl-bf16,lf-neat-bf16]
        [--repeat N] [--json-out FILE] [--lf-venv DIR]

`--repeat N` runs the list N times, alternating its order, and prints each tunesmith run's
tokens/s ratio to the TRL packed run (or to tunesmith-packed) and to the LF neat run of the same
round: on a shared machine the ratios of neighbouring runs are steadier than the absolute
numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[0].parent / "shared/data/llamafactory/alpaca_en_demo.json"
RUNS = (
    "tunesmith-packed",
    "tunesmith-padded",
    "trl-packed",
    "trl-padded",
    "tunesmith-fast",
    "tunesmith-compiled",
    "tunesmith-bf16",
    "lf-neat",
    "lf-padded",
    "tunesmith-auto",
    "trl-bf16",
    "lf-neat-bf16",
)
BF16_PAIRS = (  # (fp32 run, the same run with the tool's own bf16 flag)
    ("tunesmith-fast", "tunesmith-bf16"),
    ("trl-packed", "trl-bf16"),
    ("lf-neat", "lf-neat-bf16"),
)
DEFAULT_RUNS = ("tunesmith-fast", *RUNS[:4])
TUNESMITH_MODES = {  # mode -> (packing, speed levers, compile)
    "packed": (True, False, False),
    "padded": (False, False, False),
    "fast": (True, True, False),
    "compiled": (True, True, True),
    "bf16": (True, True, False),  # fast, with train.precision=bf16 (CPU autocast)
    "auto": (True, True, False),  # fast, with train.precision=auto (the probe decides)
}
SEED = 42
LF_VENV = Path.home() / ".cache/tunesmith/bench/lf-venv"
# LLaMA-Factory 0.9.5 pins transformers <=5.6, peft <=0.18.1, trl <=0.24 and needs torchvision
# and torchaudio to import (llamafactory/data/mm_plugin.py imports torchaudio at module level).
# torch and torchvision: the releases of the project's venv (pip takes them from this machine's
# disk); torchaudio 2.11.1 is PyPI's newest and loads beside torch 2.14.1 (it asks torch>=2.11).
LF_PINS = (
    "llamafactory==0.9.5",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "torchaudio==2.11.1",
)
LF_MARKER = "tunesmith-bench-pins.json"
THREADS = 2
CHILD_ENV = {
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "",  # fp32 on the CPU, as the issue measures it
}


def tunesmith_overrides(records: int, packing: bool, out_dir: str) -> list[str]:
    return [
        "model.name_or_path=smollm2-135m-instruct",
        "model.dtype=float32",
        f"data.train=[{DATA}]",
        f"data.max_samples={records}",
        "data.cutoff_len=512",
        "method.type=lora",
        "method.r=8",
        "method.alpha=16",
        "method.dropout=0.0",
        "method.target_modules=all-linear",
        "train.batch_size=4",
        "train.gradient_accumulation_steps=1",
        "train.learning_rate=1e-4",
        "train.lr_scheduler=linear",  # TRL's (TrainingArguments') default; both set it explicitly
        "train.warmup_ratio=0",
        "train.weight_decay=0",
        "train.max_grad_norm=1.0",
        "train.epochs=1",
        "train.precision=fp32",
        "train.gradient_checkpointing=false",
        f"train.packing={'true' if packing else 'false'}",
        f"train.seed={SEED}",
        "train.save_steps=1000000",  # no checkpoint inside the timed epoch
        "train.logging_steps=10",
        f"output.dir={out_dir}",
        "output.name=bench",
        "output.overwrite=true",
    ]


def speed_overrides(levers: bool, compiled: bool) -> list[str]:
    """train.optimize / train.compile where the config has them (models/speed.py wired into
    train/sft.py); empty otherwise, and the child applies the levers itself."""
    from tunesmith.config.schema import TrainConfig

    if "compile" not in TrainConfig.model_fields:
        return []
    return [f"train.optimize={str(levers).lower()}", f"train.compile={str(compiled).lower()}"]


def run_tunesmith_child(records: int, mode: str) -> dict:
    """One tunesmith run in this (child) process; the wall time of `trainer.train()` is taken by
    wrapping `train` on the trainer class that run_sft instantiates."""
    import torch

    torch.set_num_threads(THREADS)
    from transformers import Trainer

    import tunesmith.train.sft as sft
    from tunesmith.config.load import load_config
    from tunesmith.models.speed import optimize_for_training
    from tunesmith.runs.folder import RunFolder

    packing, levers, compiled = TUNESMITH_MODES[mode]
    wired = speed_overrides(levers, compiled)

    timing: dict = {}
    trainer_cls = getattr(sft, "CausalLMTrainer", Trainer)  # the class run_sft instantiates
    original_train = trainer_cls.train

    def timed_train(self, *args, **kwargs):
        started, cpu_started = time.perf_counter(), time.process_time()
        if levers and not wired:  # inside the timed region: compilation happens in train()
            optimize_for_training(self.model, compile=compiled)
        step, losses = self.training_step, []

        def recorded(*step_args, **step_kwargs):  # every step's loss, a tensor kept as it is
            loss = step(*step_args, **step_kwargs)
            losses.append(loss)
            return loss

        self.training_step = recorded
        timing["step_losses"] = losses
        output = original_train(self, *args, **kwargs)
        timing["seconds"] = time.perf_counter() - started
        timing["cpu_seconds"] = time.process_time() - cpu_started
        timing["log_history"] = list(self.state.log_history)
        timing["config"] = getattr(self.model, "config", None)
        return output

    trainer_cls.train = timed_train
    with tempfile.TemporaryDirectory() as out:
        bf16 = [f"train.precision={mode}"] if mode in ("bf16", "auto") else []
        config = load_config(None, tunesmith_overrides(records, packing, out) + wired + bf16)
        run = RunFolder.create(config.output, "sft-lora")
        summary = sft.run_sft(config, run).summary
    trainer_cls.train = original_train

    logged = [entry["loss"] for entry in timing["log_history"] if "loss" in entry]
    real_tokens = summary["data"]["tokens"]
    seconds = timing["seconds"]
    return {
        "tool": "tunesmith",
        "mode": mode,
        "records": records,
        "rows": summary["data"]["examples"],
        "real_tokens": real_tokens,
        "trainable_tokens": summary["data"]["trainable_tokens"],
        "steps": summary["steps"],
        "train_seconds": round(seconds, 2),
        "train_cpu_seconds": round(timing["cpu_seconds"], 2),
        "tokens_per_s": round(real_tokens / seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_loss": summary["train_loss"],
        "last_logged_loss": logged[-1] if logged else None,
        "step_losses": [round(float(loss), 6) for loss in timing["step_losses"]],
        "precision": summary.get("precision"),  # train.precision as the run settled it
        "threads": torch.get_num_threads(),
        "attention": getattr(timing.get("config"), "_attn_implementation", None),
    }


def lf_python(venv: Path) -> Path:
    """The python of LLaMA-Factory's own virtualenv, installed on first use (a few minutes and
    ~6.6 GB, most of it torch's CUDA libraries) and reused while its marker names LF_PINS."""
    python = venv / "bin/python"
    marker = venv / LF_MARKER
    if (
        python.is_file()
        and marker.is_file()
        and json.loads(marker.read_text(encoding="utf-8")).get("pins") == list(LF_PINS)
    ):
        return python
    project_venv = Path(sys.prefix).resolve()
    if venv.resolve() == project_venv or project_venv in venv.resolve().parents:
        raise SystemExit(f"--lf-venv {venv} is the project's own virtualenv; pick another folder")
    print(f"installing {' '.join(LF_PINS)} into {venv} (first use)", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", *LF_PINS],
        [str(python), "-c", "import llamafactory.train.tuner"],  # fails loudly if LF can't import
    ]
    for step in steps:
        proc = subprocess.run(step, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"LLaMA-Factory venv at {venv}: {' '.join(step)} failed")
    marker.write_text(json.dumps({"pins": list(LF_PINS)}) + "\n", encoding="utf-8")
    return python


def model_folder() -> str:
    """The embedded SmolLM2 as the safetensors folder tunesmith converts it to."""
    from tunesmith.models.resolve import resolve_model

    return str(resolve_model("smollm2-135m-instruct").path)


def launch(name: str, records: int, lf_venv: Path = LF_VENV) -> dict:
    """Run one benchmark in a fresh subprocess and read back its JSON result."""
    tool, mode = name.split("-", 1)
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        if tool == "tunesmith":
            cmd = [sys.executable, __file__, "--child", name]
        elif tool == "lf":
            cmd = [str(lf_python(lf_venv)), str(HERE / "lf_baseline.py"), "--model", model_folder()]
            cmd += ["--neat"] if mode.startswith("neat") else []
            cmd += ["--bf16"] if mode.endswith("bf16") else []
        else:
            cmd = [sys.executable, str(HERE / "trl_sft_baseline.py")]
            cmd += ["--packing"] if mode == "packed" else ["--bf16"] if mode == "bf16" else []
        cmd += ["--records", str(records), "--result-file", str(result_file)]
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        started = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, **CHILD_ENV}, check=False)
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not result_file.is_file():
            raise SystemExit(f"{name} failed (exit code {proc.returncode})")
        result = json.loads(result_file.read_text(encoding="utf-8"))
    result["process_seconds"] = round(wall, 1)
    return result


def table(results: list[dict]) -> str:
    def find(tool: str, mode: str) -> dict | None:
        return next((r for r in results if (r["tool"], r["mode"]) == (tool, mode)), None)

    bases = [
        (label, r)
        for label, r in (("TRL packed", find("trl", "packed")), ("LF neat", find("lf", "neat")))
        if r
    ]
    header = "| tool | mode | real tokens | trainable tokens | steps | train s | tokens/s "
    header += "| train CPU s | tokens/CPU s | peak RSS GB | final loss |"
    header += "".join(
        f" tokens/s vs {label} | RSS vs {label} | loss vs {label} |" for label, _ in bases
    )
    lines = [header, "|---|---|" + "---:|" * (9 + 3 * len(bases))]
    for r in results:
        cpu = r.get("train_cpu_seconds") or float("nan")  # user + system, all threads
        row = (
            f"| {r['tool']} | {r['mode']} | {r['real_tokens']:,} | {r['trainable_tokens']:,} "
            f"| {r['steps']} | {r['train_seconds']:.1f} | {r['tokens_per_s']:.1f} "
            f"| {cpu:.1f} | {r['real_tokens'] / cpu:.1f} "
            f"| {r['peak_rss_mb'] * 1024**2 / 1e9:.2f} | {r['train_loss']:.4f} |"
        )
        for _, base in bases:
            row += (
                f" {r['tokens_per_s'] / base['tokens_per_s']:.2f}x"
                f" | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x"
                f" | {100 * (r['train_loss'] / base['train_loss'] - 1):+.2f}% |"
            )
        lines.append(row)
    return "\n".join(lines)


def token_check(results: list[dict]) -> str:
    counts = {(r["real_tokens"], r["trainable_tokens"]) for r in results}
    detail = ", ".join(
        f"{r['tool']}-{r['mode']} {r['real_tokens']}/{r['trainable_tokens']}" for r in results
    )
    verdict = "agree" if len(counts) == 1 else "DIFFER"
    return f"token counts (real/trainable) {verdict}: {detail}"


def check_tokens(results: list[dict]) -> None:
    """Every run must train on the same tokens as the first: stop loudly when one does not."""
    first, last = results[0], results[-1]
    counts = [(r["real_tokens"], r["trainable_tokens"]) for r in (first, last)]
    if counts[0] != counts[1]:
        raise SystemExit(
            f"token counts differ: {first['tool']}-{first['mode']} has {counts[0][0]} real / "
            f"{counts[0][1]} trainable tokens, {last['tool']}-{last['mode']} {counts[1][0]} / "
            f"{counts[1][1]}; the runs do not train on the same tokens, so their speeds do not "
            "compare"
        )


def loss_curves(results: list[dict]) -> str:
    """Each tool's bf16 run against its fp32 run of the same round, step by step: the loss
    difference over the whole run, not only at its end."""
    by_name = {f"{r['tool']}-{r['mode']}": r for r in results}
    lines = []
    for fp32_name, bf16_name in BF16_PAIRS:
        fp32, bf16 = by_name.get(fp32_name), by_name.get(bf16_name)
        if not (fp32 and bf16 and fp32.get("step_losses") and bf16.get("step_losses")):
            continue
        a, b = fp32["step_losses"], bf16["step_losses"]
        n = min(len(a), len(b))
        rel = [abs(y / x - 1) for x, y in zip(a[:n], b[:n], strict=True) if x]
        worst = max(range(len(rel)), key=rel.__getitem__)
        tail = [100 * (y / x - 1) for x, y in zip(a[:n], b[:n], strict=True) if x][-5:]
        lines.append(
            f"{bf16_name} vs {fp32_name}: {n} steps{'' if len(a) == len(b) else ' (COUNTS DIFFER)'}"
            f", per-step loss |diff| mean {100 * sum(rel) / len(rel):.2f}%, max "
            f"{100 * rel[worst]:.2f}% (step {worst + 1}: {a[worst]:.4f} -> {b[worst]:.4f}), "
            f"last 5 steps {', '.join(f'{d:+.2f}%' for d in tail)}; final loss "
            f"{fp32['train_loss']:.4f} -> {bf16['train_loss']:.4f} "
            f"({100 * (bf16['train_loss'] / fp32['train_loss'] - 1):+.2f}%), tokens/s "
            f"{bf16['tokens_per_s'] / fp32['tokens_per_s']:.2f}x, RSS "
            f"{bf16['peak_rss_mb'] / fp32['peak_rss_mb']:.2f}x"
        )
    return "\n".join(lines)


def round_ratios(rounds: list[list[dict]]) -> str:
    """Per round: each tunesmith run's tokens/s over the reference runs of the same round."""
    lines = []
    for i, results in enumerate(rounds, 1):
        by_name = {f"{r['tool']}-{r['mode']}": r for r in results}
        refs = [ref for ref in ("trl-packed", "lf-neat") if ref in by_name]
        refs = refs or (["tunesmith-packed"] if "tunesmith-packed" in by_name else [])
        if not refs:
            return "ratios: no trl-packed, lf-neat or tunesmith-packed run to compare with"
        for ref in refs:
            base = by_name[ref]
            ratios = ", ".join(
                f"{name} {r['tokens_per_s'] / base['tokens_per_s']:.3f}x tokens/s, "
                f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x RSS, "
                f"loss {100 * (r['train_loss'] / base['train_loss'] - 1):+.2f}%"
                for name, r in by_name.items()
                if name.startswith("tunesmith") and name != ref
            )
            lines.append(f"round {i}: vs {ref}: {ratios}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds, alternating the order")
    parser.add_argument("--json-out", default=None, help="also write the JSON list here")
    parser.add_argument(
        "--lf-venv", type=Path, default=LF_VENV, help="LLaMA-Factory's own virtualenv (cached)"
    )
    parser.add_argument(
        "--child", choices=[n for n in RUNS if n.startswith("tunesmith")], help=argparse.SUPPRESS
    )
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # inside the subprocess of one tunesmith run
        result = run_tunesmith_child(args.records, args.child.split("-")[1])
        print(json.dumps(result), flush=True)
        Path(args.result_file).write_text(json.dumps(result), encoding="utf-8")
        return

    names = [name.strip() for name in args.runs.split(",") if name.strip()]
    unknown = [name for name in names if name not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    rounds: list[list[dict]] = []
    done: list[dict] = []
    for i in range(args.repeat):
        rounds.append([])
        for name in names if i % 2 == 0 else names[::-1]:
            result = launch(name, args.records, args.lf_venv)
            print(f"load average after {name}: {os.getloadavg()}", flush=True)
            result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            rounds[-1].append(result)
            done.append(result)
            check_tokens([done[0], result])
    results = rounds[-1]

    import peft
    import torch
    import transformers
    import trl

    print("\n" + json.dumps(rounds, indent=2))
    lf_versions = next((r["versions"] for r in done if r["tool"] == "lf"), None)
    if lf_versions:
        print(f"LLaMA-Factory venv ({args.lf_venv}): {lf_versions}")
    print(
        f"\n{args.records} records, {THREADS} threads, {os.cpu_count()} CPUs "
        f"({platform.machine()}), torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}\n"
    )
    for i, round_results in enumerate(rounds, 1):
        print(f"\nround {i}:\n" + table(round_results))
    print("\n" + token_check(results))
    for i, round_results in enumerate(rounds, 1):
        curves = loss_curves(round_results)
        if curves:
            print(f"\nbf16 against fp32, round {i}:\n{curves}")
    auto = [r["precision"] for r in done if r["mode"] == "auto" and r.get("precision")]
    for choice in auto:
        print(f"tunesmith-auto: auto chose {choice['precision']}: {choice['reason']}")
    if args.repeat > 1:
        print("\n" + round_ratios(rounds))
    if args.json_out:
        everything = rounds if args.repeat > 1 else results
        Path(args.json_out).write_text(json.dumps(everything, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
