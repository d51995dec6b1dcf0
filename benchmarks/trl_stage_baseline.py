"""Plain TRL baselines of the preference stages for benchmarks/stage_throughput.py (issue 20).

What a user writes: the records as TRL's conversational datasets (prompt / chosen / rejected
messages; KTO prompt / completion / label), the model, `peft_config=LoraConfig(...)` and the
stage's trainer with its default collator: DPOTrainer, KTOTrainer, ORPOTrainer
(trl.experimental.orpo) or RewardTrainer (the causal LM as a one-output sequence classifier).
LoRA rank 8, alpha 16, dropout 0, all linear layers; batch 2, max_length = cutoff, lr with a
linear schedule and no warmup, one epoch, fp32 on the CPU with 2 threads, no gradient
checkpointing (TRL's configs turn it on by default; it is off here as in tunesmith's runs).
TRL's own settings stay: DPO's reference with the adapter disabled, computed in each step.

    .venv/bin/python benchmarks/trl_stage_baseline.py --stage dpo --data FILE [--model DIR]
        [--cutoff 256] [--chat-template FILE] [--result-file F]

Prints one JSON object (also written to --result-file): real tokens (every prompt + answer
sequence the stage trains on, counted from TRL's prepared dataset: `stage_tokens`), trainable
(answer) tokens, a digest of the token ids, train seconds (wall time around `trainer.train()`),
tokens/s, peak RSS of this process, the final loss.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import tempfile
import time
from pathlib import Path

# before torch is imported: 2 threads, CPU only, nothing from the network
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

STAGES = ("dpo", "kto", "orpo", "rm")
SEED = 42
THREADS = 2
BATCH = 2
LEARNING_RATE = 5e-5
BETA = 0.1  # DPO's and KTO's beta, ORPO's lambda: TRL's defaults, set explicitly on both sides
ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user"}


def messages(turns: list[dict]) -> list[dict]:
    """LLaMA-Factory's sharegpt turns ({"from", "value"}) or openai messages, as messages."""
    out = []
    for turn in turns:
        if "from" in turn:
            out.append({"role": ROLES.get(turn["from"], turn["from"]), "content": turn["value"]})
        else:
            out.append({"role": turn["role"], "content": turn["content"]})
    return out


def conversational(stage: str, record: dict) -> dict:
    """One LLaMA-Factory demo record as TRL's conversational example of the stage."""
    if stage == "kto":
        turns = messages(record["messages"])
        return {"prompt": turns[:-1], "completion": turns[-1:], "label": bool(record["label"])}
    prompt = messages(record["conversations"])
    chosen, rejected = (messages([record[key]]) for key in ("chosen", "rejected"))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def stage_tokens(stage: str, rows, max_length: int | None = None) -> dict:
    """Real and trainable tokens of a prepared dataset (TRL's or tunesmith's: the same
    columns), and a digest of its rows' token ids (in any order): equal digests, equal tokens.

    dpo: every prompt + chosen and prompt + rejected sequence (answers trained); kto: prompt +
    completion (the KL sequences TRL adds are the same completions rotated, on both sides);
    orpo: the chosen and rejected input ids (labels trained); rm: the whole chosen and rejected
    sequences (all read, none a target). dpo and kto rows are cut to max_length as TRL's
    collators cut them (the start kept) when the batch is built; tunesmith's come cut."""
    real = trainable = 0
    rows_seen = []
    for row in rows:
        if stage in ("dpo", "kto"):
            keys = ("chosen_ids", "rejected_ids") if stage == "dpo" else ("completion_ids",)
            prompt = list(row["prompt_ids"])
            seqs = [(prompt + list(row[k]))[:max_length] for k in keys]
            answer = sum(max(0, len(s) - len(prompt)) for s in seqs)
        elif stage == "orpo":
            seqs = [row["chosen_input_ids"], row["rejected_input_ids"]]
            labels = row["chosen_labels"] + row["rejected_labels"]
            answer = sum(1 for t in labels if t != -100)
        else:
            seqs = [row["chosen_ids"], row["rejected_ids"]]
            answer = sum(len(s) for s in seqs)
        real += sum(len(s) for s in seqs)
        trainable += answer
        rows_seen.append(json.dumps([list(s) for s in seqs]))
    digest = hashlib.sha256("\n".join(sorted(rows_seen)).encode())  # whatever the row order
    return {"real_tokens": real, "trainable_tokens": trainable, "digest": digest.hexdigest()[:16]}


def common_args(out: str) -> dict:
    return dict(
        output_dir=out,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        num_train_epochs=1,
        bf16=False,  # TRL's configs default to bf16
        fp16=False,
        gradient_checkpointing=False,  # TRL's configs default to True
        use_cpu=True,
        seed=SEED,
        logging_steps=10,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
    )


def build_trainer(
    stage: str, model_path: str, dataset, out: str, cutoff: int, template: str | None = None
):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if template is not None:
        tokenizer.chat_template = Path(template).read_text(encoding="utf-8")
    args = common_args(out)
    task = "SEQ_CLS" if stage == "rm" else "CAUSAL_LM"
    peft_config = LoraConfig(
        task_type=task, r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"
    )
    if stage == "rm":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=1, dtype=torch.float32
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        config = RewardConfig(**args, max_length=cutoff)
        return RewardTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(**args, max_length=cutoff, beta=BETA, loss_type=["sigmoid"])
        trainer_cls = DPOTrainer
    elif stage == "kto":
        from trl import KTOConfig, KTOTrainer

        # TRL pairs each completion with the previous one for the KL term: sequential order
        config = KTOConfig(
            **args, max_length=cutoff, beta=BETA, train_sampling_strategy="sequential"
        )
        trainer_cls = KTOTrainer
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        config = ORPOConfig(**args, max_length=cutoff, beta=BETA)
        trainer_cls = ORPOTrainer
    return trainer_cls(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--data", required=True, help="LLaMA-Factory demo records (JSON list)")
    parser.add_argument("--model", default=None, help="model folder (default: embedded SmolLM2)")
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--chat-template", default=None, help="a file: the template to use")
    parser.add_argument("--result-file", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(THREADS)
    from datasets import Dataset
    from transformers import set_seed

    records = json.loads(Path(args.data).read_text(encoding="utf-8"))
    dataset = Dataset.from_list([conversational(args.stage, r) for r in records])
    if args.model is None:
        from tunesmith.models.resolve import resolve_model

        args.model = str(resolve_model("smollm2-135m-instruct").path)

    set_seed(SEED)
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(
            args.stage, args.model, dataset, out, args.cutoff, args.chat_template
        )
        counted = stage_tokens(args.stage, trainer.train_dataset, args.cutoff)
        started, cpu_started = time.perf_counter(), time.process_time()
        output = trainer.train()
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started

    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = {
        "tool": "trl",
        "stage": args.stage,
        "records": len(records),
        "rows": len(trainer.train_dataset),
        **counted,
        "steps": output.global_step,
        "train_seconds": round(seconds, 2),
        "train_cpu_seconds": round(cpu_seconds, 2),
        "tokens_per_s": round(counted["real_tokens"] / seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_loss": output.training_loss,
        "last_logged_loss": logged[-1] if logged else None,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
