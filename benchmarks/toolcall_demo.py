"""Tool-call SFT demo on CPU: the embedded SmolLM2-135M-Instruct before and after a short SFT
on LLaMA-Factory's glaive_toolcall demo (issue 26).

SmolLM2's own template has no tools, so both runs use `model.chat_template=chatml_tools`
(ChatML with Hermes-style <tool_call> tags; the tool list in the system message). The 300
records are split: the last --held-out records whose assistant calls a function are the test
(each cut before its first call: the prompt offers the record's tools, the reference is that
call), the rest train (calls, results and answers; loss on the assistant's calls and answers).
SFT: LoRA r 16 / alpha 32 on all linear layers, lr 2e-4 cosine, batch 2, data.cutoff_len 768,
--steps steps, torch on --threads threads.

The eval task `tool_calls` (evaluation/tool_calls.py) scores greedy replies (--max-new-tokens):
valid call, right function, exact and partial argument match.

    .venv/bin/python benchmarks/toolcall_demo.py [--steps 40] [--held-out 30]
        [--out DIR] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

GLAIVE = (
    Path(__file__).resolve().parents[2] / "shared/data/llamafactory/glaive_toolcall_en_demo.json"
)


def split(records: list[dict], held_out: int) -> tuple[list[dict], list[dict]]:
    """(training records, test records cut before their first call)."""
    called = [
        i
        for i, r in enumerate(records)
        if any(t["from"] == "function_call" for t in r["conversations"])
    ]
    test_ids = set(called[-held_out:])
    tests = []
    for i in sorted(test_ids):
        turns = records[i]["conversations"]
        first = next(k for k, t in enumerate(turns) if t["from"] == "function_call")
        tests.append({"conversations": turns[: first + 1], "tools": records[i]["tools"]})
    return [r for i, r in enumerate(records) if i not in test_ids], tests


def score(run_or_none, items, model_cfg, max_new_tokens: int) -> dict:
    from tunesmith.evaluation.tool_calls import evaluate_calls
    from tunesmith.models.engine import GenerationParams, TransformersEngine
    from tunesmith.runs.inference import load_for_inference

    model, tokenizer = load_for_inference(run_or_none, None if run_or_none else model_cfg)
    engine = TransformersEngine(model, tokenizer, batch_size=8)
    started = time.perf_counter()
    replies = engine.generate(
        [it.messages for it in items], GenerationParams(max_new_tokens=max_new_tokens)
    )
    report = evaluate_calls(
        [c.text for c in replies], [it.reference_calls for it in items], tokenizer.chat_template
    )
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["examples"] = [c.text for c in replies[:3]]
    report.pop("items")
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--held-out", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", default="/tmp/tunesmith-toolcall-demo")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from tunesmith.config.load import load_config
    from tunesmith.evaluation.runner import load_items
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train import run_stage

    torch.set_num_threads(args.threads)  # 1: fastest on a shared, loaded 2-core host
    out = Path(args.out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    train, tests = split(json.loads(GLAIVE.read_text(encoding="utf-8")), args.held_out)
    train_file, test_file = out / "data/train.jsonl", out / "data/test.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    test_file.write_text("".join(json.dumps(r) + "\n" for r in tests), encoding="utf-8")
    items = load_items([str(test_file)])

    config = load_config(
        None,
        [
            "model.chat_template=chatml_tools",
            f"data.train=[{train_file}]",
            "data.cutoff_len=768",
            f"output.dir={out / 'runs'}",
            "output.name=toolcall-sft",
            "output.overwrite=true",
            "method.r=16",
            "method.alpha=32",
            "train.learning_rate=2e-4",
            "train.batch_size=2",
            f"train.max_steps={args.steps}",
            "train.save_steps=1000",
        ],
    )
    before = score(None, items, config.model, args.max_new_tokens)
    started = time.perf_counter()
    result = run_stage(config, RunFolder.create(config.output, "benchmark"), False)
    train_seconds = time.perf_counter() - started
    after = score(result.run.root, items, config.model, args.max_new_tokens)
    report = {
        "train_records": len(train),
        "test_items": len(items),
        "steps": args.steps,
        "train_seconds": round(train_seconds, 1),
        "train_loss": result.summary["train_loss"],
        "before": before,
        "after": after,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__},
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
