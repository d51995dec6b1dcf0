"""Per-stage training throughput: tunesmith's dpo, kto, orpo and rm against a plain TRL script of
the same job (issue 20, item 2); cls has its own side-by-side (benchmarks/cls_throughput.py,
run after the stages with --cls).

The job: the embedded SmolLM2-135M-Instruct with LoRA (rank 8, alpha 16, dropout 0, all linear
layers; rm: the model as a one-output sequence classifier, its new head trained too), batch 2,
cutoff 256, lr 5e-5 with a linear schedule and no warmup, one epoch, beta 0.1, fp32 on the
CPU with 2 threads, no gradient checkpointing. The data: the first --records records of
LLaMA-Factory's demo sets (../shared/data/llamafactory/dpo_en_demo.json for dpo, orpo and rm;
kto_en_demo.json for kto) that every tool cuts alike (`select_records`: for dpo, kto and orpo
a prompt that leaves the answer a quarter of the cutoff, tunesmith with
train.preference.truncation=keep_prompt, which is then TRL's keep-the-start cut; for rm the
records that fit whole, as RewardTrainer drops longer ones: 24 of the demo's 300), written to
a temporary file both tools read. orpo: both tools use the model's template without its
trailing newline (ORPO_TEMPLATE: TRL's ORPOTrainer would append an extra end-of-sequence token).

Runs, each in its own subprocess:
- `tunesmith-STAGE`: `run_stage` with the stage's defaults (train.optimize on: the speed levers
  of models/speed.py, and dpo's and rm's packed pairs of models/preference_speed.py);
- `plain-STAGE`: the same with train.optimize=false (where the gain comes from);
- `trl-STAGE`: benchmarks/trl_stage_baseline.py, what a user writes with TRL and PEFT.

Measured the same way for every run: tokens/s = real tokens / wall time around the trainer's
`train()` (loading and tokenizing excluded); real tokens = every prompt + answer sequence the
stage trains on, counted from the trainer's prepared dataset (trl_stage_baseline.stage_tokens);
peak RSS = the child's own ru_maxrss; final loss = `training_loss` (mean over the epoch). Every
run of a stage must have the same real and trainable token counts and the same digest of its
token ids as the first run of that stage: the benchmark stops with a sentence otherwise.

    .venv/bin/python benchmarks/stage_throughput.py [--stages dpo,kto,orpo,rm]
        [--tools tunesmith,trl] [--records 64] [--repeat N] [--cls] [--json-out FILE]

`--repeat N` runs each stage's list N times, alternating its order, and prints each round's
tunesmith / TRL ratios: on a shared machine neighbouring runs' ratios are steadier than the
absolute numbers.
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
sys.path.insert(0, str(HERE))
from trl_stage_baseline import (  # noqa: E402
    BATCH,
    BETA,
    LEARNING_RATE,
    SEED,
    STAGES,
    THREADS,
    conversational,
    stage_tokens,
)

SHARED = HERE.parents[0].parent / "shared/data/llamafactory"
DATA = {"dpo": "dpo_en_demo.json", "orpo": "dpo_en_demo.json", "rm": "dpo_en_demo.json"}
DATA["kto"] = "kto_en_demo.json"
TOOLS = ("tunesmith", "plain", "trl")
CUTOFF = 256
# ORPO only: SmolLM2's own template without the newline after the last turn's <|im_end|>. TRL's
# ORPOTrainer appends the end-of-sequence token to an answer that does not end in one; with the
# model's template the answer ends in "<|im_end|>\n", so TRL would train one token per sequence
# more than the model's template holds. Both tools get this template for orpo.
ORPO_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>'}}{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '\n<|im_start|>assistant\n' }}{% endif %}"
)
CHILD_ENV = {
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "",  # fp32 on the CPU, as the issue measures it
}


def model_folder() -> str:
    from tunesmith.models.resolve import resolve_model

    return str(resolve_model("smollm2-135m-instruct").path)


def select_records(stage: str, records: int, model: str, cutoff: int, template: str | None):
    """The first `records` records of the stage's demo set that every tool cuts alike.

    dpo, kto, orpo: TRL keeps the start of prompt + answer (max_length), tunesmith with
    train.preference.truncation=keep_prompt keeps the prompt and cuts the answers to what it
    leaves; the two agree while the prompt leaves the answer its floor (cutoff // 4 tokens), so
    records with longer prompts are left out. rm: RewardTrainer drops a record longer than
    max_length where tunesmith would cut it, so only records that fit whole are kept (fewer:
    the demo's answers are long; all of them are used when fewer than `records` fit)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if template is not None:
        tokenizer.chat_template = template
    data = json.loads((SHARED / DATA[stage]).read_text(encoding="utf-8"))

    def length(messages: list[dict], prompt: bool = False) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    kept = []
    for record in data:
        example = conversational(stage, record)
        if stage == "rm":
            answers = [example["chosen"], example["rejected"]]
            fits = max(length(example["prompt"] + a) for a in answers) <= cutoff
        else:
            fits = length(example["prompt"], prompt=True) <= cutoff - cutoff // 4
        if fits:
            kept.append(record)
        if len(kept) == records:
            break
    if stage != "rm" and len(kept) < records:
        raise SystemExit(
            f"{DATA[stage]}: only {len(kept)} of {len(data)} records have a prompt that leaves "
            f"the answer {cutoff // 4} of {cutoff} tokens; ask for --records {len(kept)} or fewer"
        )
    return kept


def tunesmith_overrides(
    stage: str, data: str, optimize: bool, out: str, cutoff: int, template: str | None
) -> list:
    return [
        "model.name_or_path=smollm2-135m-instruct",
        *([f"model.chat_template={template}"] if template else []),
        "model.dtype=float32",
        f"data.train=[{data}]",
        f"data.cutoff_len={cutoff}",
        "method.type=lora",
        "method.r=8",
        "method.alpha=16",
        "method.dropout=0.0",
        "method.target_modules=all-linear",
        f"train.stage={stage}",
        f"train.batch_size={BATCH}",
        "train.gradient_accumulation_steps=1",
        f"train.learning_rate={LEARNING_RATE}",
        "train.lr_scheduler=linear",
        "train.warmup_ratio=0",
        "train.weight_decay=0",
        "train.max_grad_norm=1.0",
        "train.epochs=1",
        "train.precision=fp32",
        "train.gradient_checkpointing=false",
        f"train.optimize={str(optimize).lower()}",
        f"train.preference.beta={BETA}",
        "train.preference.truncation=keep_prompt",  # TRL's cut, on the records selected
        f"train.seed={SEED}",
        "train.save_steps=1000000",  # no checkpoint inside the timed epoch
        "train.logging_steps=10",
        f"output.dir={out}",
        "output.name=bench",
        "output.overwrite=true",
    ]


def run_tunesmith_child(
    stage: str, data: str, optimize: bool, cutoff: int, template: str | None
) -> dict:
    """One tunesmith run in this (child) process; the wall time of the trainer's `train()` is
    taken by wrapping transformers' Trainer.train, which every stage's trainer inherits."""
    import torch

    torch.set_num_threads(THREADS)
    from transformers import Trainer

    from tunesmith.config.load import load_config
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train import run_stage

    timing: dict = {}
    original_train = Trainer.train

    def timed_train(self, *args, **kwargs):
        timing["counted"] = stage_tokens(stage, self.train_dataset, cutoff)
        timing["rows"] = len(self.train_dataset)
        started, cpu_started = time.perf_counter(), time.process_time()
        output = original_train(self, *args, **kwargs)
        timing["seconds"] = time.perf_counter() - started
        timing["cpu_seconds"] = time.process_time() - cpu_started
        timing["log_history"] = list(self.state.log_history)
        timing["loss"], timing["steps"] = output.training_loss, output.global_step
        timing["collator"] = type(self.data_collator).__name__
        return output

    Trainer.train = timed_train
    with tempfile.TemporaryDirectory() as out:
        overrides = tunesmith_overrides(stage, data, optimize, out, cutoff, template)
        config = load_config(None, overrides)
        run = RunFolder.create(config.output, f"{stage}-bench")
        run_stage(config, run)
    Trainer.train = original_train

    counted, seconds = timing["counted"], timing["seconds"]
    logged = [entry["loss"] for entry in timing["log_history"] if "loss" in entry]
    return {
        "tool": "tunesmith" if optimize else "plain",
        "stage": stage,
        "records": len(json.loads(Path(data).read_text(encoding="utf-8"))),
        "rows": timing["rows"],
        **counted,
        "steps": timing["steps"],
        "train_seconds": round(seconds, 2),
        "train_cpu_seconds": round(timing["cpu_seconds"], 2),
        "tokens_per_s": round(counted["real_tokens"] / seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_loss": timing["loss"],
        "last_logged_loss": logged[-1] if logged else None,
        "threads": torch.get_num_threads(),
        "collator": timing["collator"],
    }


def launch(tool: str, stage: str, data: str, model: str, cutoff: int, template: str | None):
    """Run one benchmark in a fresh subprocess and read back its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        if tool == "trl":
            cmd = [sys.executable, str(HERE / "trl_stage_baseline.py"), "--model", model]
        else:
            cmd = [sys.executable, __file__, "--child", tool]
        cmd += ["--stage", stage, "--data", data, "--cutoff", str(cutoff)]
        cmd += ["--chat-template", template] if template else []
        cmd += ["--result-file", str(result_file)]
        print(f"\n=== {tool}-{stage}: {' '.join(cmd)}", flush=True)
        started = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, **CHILD_ENV}, check=False)
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not result_file.is_file():
            raise SystemExit(f"{tool}-{stage} failed (exit code {proc.returncode})")
        result = json.loads(result_file.read_text(encoding="utf-8"))
    result["process_seconds"] = round(wall, 1)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def check_tokens(first: dict, result: dict) -> None:
    """A run must train on the tokens the stage's first run trained on: stop otherwise."""
    keys = ("real_tokens", "trainable_tokens", "digest")
    if any(first[k] != result[k] for k in keys):
        a = ", ".join(f"{k} {first[k]}" for k in keys)
        b = ", ".join(f"{k} {result[k]}" for k in keys)
        raise SystemExit(
            f"{first['stage']}: {first['tool']} trained on {a} but {result['tool']} on {b}; the "
            "runs do not train on the same tokens, so their speeds do not compare"
        )


def table(results: list[dict]) -> str:
    header = (
        "| stage | tool | real tokens | trainable tokens | steps | train s | tokens/s "
        "| peak RSS GB | final loss | tokens/s vs TRL | RSS vs TRL | loss vs TRL |"
    )
    lines = [header, "|---|---|" + "---:|" * 10]
    for r in results:
        base = next((b for b in results if b["tool"] == "trl" and b["stage"] == r["stage"]), None)
        row = (
            f"| {r['stage']} | {r['tool']} | {r['real_tokens']:,} | {r['trainable_tokens']:,} "
            f"| {r['steps']} | {r['train_seconds']:.1f} | {r['tokens_per_s']:.1f} "
            f"| {r['peak_rss_mb'] * 1024**2 / 1e9:.2f} | {r['train_loss']:.4f} |"
        )
        if base is None:
            row += " | | |"
        else:
            loss = abs(base["train_loss"]) or 1.0
            row += (
                f" {r['tokens_per_s'] / base['tokens_per_s']:.2f}x"
                f" | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x"
                f" | {100 * (r['train_loss'] - base['train_loss']) / loss:+.2f}% |"
            )
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--tools", default="tunesmith,trl", help=f"of {', '.join(TOOLS)}")
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--cutoff", type=int, default=CUTOFF)
    parser.add_argument("--repeat", type=int, default=1, help="rounds, alternating the order")
    parser.add_argument("--cls", action="store_true", help="then benchmarks/cls_throughput.py")
    parser.add_argument("--json-out", default=None, help="also write the JSON rounds here")
    parser.add_argument("--child", choices=["tunesmith", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--chat-template", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # inside the subprocess of one tunesmith run
        optimize = args.child == "tunesmith"
        result = run_tunesmith_child(
            args.stage, args.data, optimize, args.cutoff, args.chat_template
        )
        print(json.dumps(result), flush=True)
        Path(args.result_file).write_text(json.dumps(result), encoding="utf-8")
        return

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [s for s in stages if s not in STAGES] + [t for t in tools if t not in TOOLS]
    if bad:
        parser.error(f"unknown {bad}; stages: {', '.join(STAGES)}; tools: {', '.join(TOOLS)}")
    model = model_folder()
    rounds: list[list[dict]] = [[] for _ in range(args.repeat)]
    with tempfile.TemporaryDirectory() as tmp:
        files, templates = {}, {}
        template_file = Path(tmp) / "orpo_template.jinja"
        template_file.write_text(ORPO_TEMPLATE, encoding="utf-8")
        for stage in stages:
            files[stage] = str(Path(tmp) / f"{stage}.json")
            templates[stage] = str(template_file) if stage == "orpo" else None
            template = ORPO_TEMPLATE if stage == "orpo" else None
            kept = select_records(stage, args.records, model, args.cutoff, template)
            print(f"{stage}: {len(kept)} records of {DATA[stage]}", flush=True)
            Path(files[stage]).write_text(json.dumps(kept), encoding="utf-8")
        for stage in stages:
            first = None
            for i in range(args.repeat):
                for tool in tools if i % 2 == 0 else tools[::-1]:
                    result = launch(tool, stage, files[stage], model, args.cutoff, templates[stage])
                    first = first or result
                    check_tokens(first, result)
                    rounds[i].append(result)

    import peft
    import torch
    import transformers
    import trl

    print("\n" + json.dumps(rounds, indent=2))
    print(
        f"\n{args.records} records a stage, cutoff {args.cutoff}, batch {BATCH}, {THREADS} "
        f"threads, {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}"
    )
    for i, results in enumerate(rounds, 1):
        print(f"\nround {i}:\n" + table(results))
    print("\ntoken counts and token-id digests agree within every stage (checked)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rounds, indent=2) + "\n", encoding="utf-8")
    if args.cls:
        cmd = [sys.executable, str(HERE / "cls_throughput.py"), "--runs", "tunesmith,trainer-peft"]
        cmd += ["--repeat", str(args.repeat)]
        print(f"\n=== cls: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, env={**os.environ, **CHILD_ENV}, check=True)


if __name__ == "__main__":
    main()
