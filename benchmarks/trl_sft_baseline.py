"""Plain TRL `SFTTrainer` baseline for the training throughput benchmark (issue 6, "Speed").

The embedded SmolLM2-135M-Instruct with LoRA (rank 8, alpha 16, dropout 0, all linear layers),
the first N alpaca records, cutoff 512, batch 4, lr 1e-4, linear schedule, no warmup, one epoch,
fp32 on the CPU with 2 threads, no gradient checkpointing, loss on responses only.

Responses only: the records become *conversational* prompt/completion examples
(prompt = [system?, user], completion = [assistant]). TRL renders them with the tokenizer's chat
template (SmolLM2's ChatML): the prompt with `add_generation_prompt=True`, the completion is what
the full conversation adds after it (the answer, `<|im_end|>`, newline), and
`completion_only_loss` (on by default for prompt/completion data) trains on those tokens only:
the same tokens tunesmith trains on. (Plain-text prompt/completion would make TRL append a second
`<|im_end|>`, since the rendered completion ends with a newline, not with the eos token.)

Padded: `packing=False, padding_free=False` (right padding to the longest row of a batch, with an
attention mask). Packed: `packing=True` with TRL's default "bfd" strategy, which turns on
padding-free batches (position ids, no padding); in TRL a packed row is up to `max_length`
tokens, so a batch of 4 holds 4 such rows.

`--bf16`: TRL's own bf16 flag (`bf16=True`; on the CPU the Trainer's bf16 autocast over the fp32
weights), packed as `--packing` is: the `trl-bf16` run beside `trl-packed` (issue 20, item 3).

    .venv/bin/python benchmarks/trl_sft_baseline.py [--records 200] [--packing] [--bf16]
        [--result-file F]

Prints one JSON object (also written to --result-file): real (non-pad) tokens, trainable tokens,
train seconds (wall time around `trainer.train()`), tokens/s, peak RSS of this process, losses
(`step_losses`: every optimizer step's loss, as `training_step` returned it; kept as tensors and
read after the timed region, so recording them costs no time inside it).
Normally run by benchmarks/train_throughput.py, one subprocess per run.
"""

from __future__ import annotations

import argparse
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

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/llamafactory/alpaca_en_demo.json"
SEED = 42
THREADS = 2


def alpaca_to_prompt_completion(record: dict) -> dict:
    """LLaMA-Factory's alpaca convention: the input follows the instruction on a new line."""
    if record.get("history"):
        raise ValueError("records with history are not supported by this baseline")
    instruction, extra = record["instruction"], record.get("input") or ""
    user = f"{instruction}\n{extra}" if extra.strip() else instruction
    prompt = [{"role": "user", "content": user}]
    if (record.get("system") or "").strip():
        prompt.insert(0, {"role": "system", "content": record["system"]})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": record["output"]}]}


def record_step_losses(trainer) -> list:
    """Every `training_step`'s returned loss (a detached tensor), appended as training runs."""
    losses: list = []
    step = trainer.training_step

    def recorded(*args, **kwargs):
        loss = step(*args, **kwargs)
        losses.append(loss)
        return loss

    trainer.training_step = recorded
    return losses


def default_model_path() -> str:
    """The embedded SmolLM2 (a GGUF file), as the safetensors folder tunesmith converts it to."""
    from tunesmith.models.resolve import resolve_model

    return resolve_model("smollm2-135m-instruct").path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--packing", action="store_true", help="TRL packing (bfd, padding-free)")
    parser.add_argument("--bf16", action="store_true", help="TRL's bf16=True (packed)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--model", default=None, help="model folder (default: embedded SmolLM2)")
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--result-file", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(THREADS)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    records = json.loads(Path(args.data).read_text(encoding="utf-8"))[: args.records]
    dataset = Dataset.from_list([alpaca_to_prompt_completion(r) for r in records])

    set_seed(SEED)
    model_path = args.model or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules="all-linear",
    )
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            max_length=args.cutoff,
            packing=args.packing or args.bf16,
            padding_free=False,  # packing=True with "bfd" turns it on by itself
            completion_only_loss=True,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            learning_rate=1e-4,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            num_train_epochs=1,
            bf16=args.bf16,  # SFTConfig's default is True; on the CPU: the Trainer's autocast
            fp16=False,
            gradient_checkpointing=False,  # SFTConfig's default is True
            use_cpu=True,
            seed=SEED,
            logging_steps=10,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        prepared = trainer.train_dataset
        lengths = [len(ids) for ids in prepared["input_ids"]]
        trainable = sum(sum(t != -100 for t in labels) for labels in prepared["labels"])
        steps = record_step_losses(trainer)
        started, cpu_started = time.perf_counter(), time.process_time()
        output = trainer.train()
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started  # all threads: steadier under load

    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    real_tokens = sum(lengths)  # packed rows hold no padding; padded rows are padded in batches
    result = {
        "tool": "trl",
        "mode": "bf16" if args.bf16 else "packed" if args.packing else "padded",
        "records": len(records),
        "rows": len(lengths),
        "real_tokens": real_tokens,
        "trainable_tokens": trainable,
        "tokens_seen_by_trl": trainer._total_train_tokens,
        "steps": output.global_step,
        "train_seconds": round(seconds, 2),
        "train_cpu_seconds": round(cpu_seconds, 2),
        "tokens_per_s": round(real_tokens / seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_loss": output.training_loss,
        "last_logged_loss": logged[-1] if logged else None,
        "step_losses": [round(float(loss), 6) for loss in steps],
        "param_dtypes": sorted({str(p.dtype) for p in trainer.model.parameters()}),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
