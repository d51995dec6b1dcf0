"""LLaMA-Factory baseline for the training throughput benchmark (issue 20, item 1).

Runs inside LLaMA-Factory's own virtualenv (benchmarks/train_throughput.py installs it under
~/.cache/tunesmith/bench/lf-venv and starts this script with that venv's python); it imports
nothing from tunesmith. The workload is the one benchmarks/trl_sft_baseline.py runs: the model
folder given by --model (the embedded SmolLM2-135M-Instruct, resolved by the parent), the first N
alpaca records, LoRA rank 8 / alpha 16 / dropout 0 on all linear layers (`lora_target: all`),
cutoff 512, batch 4, lr 1e-4 with a linear schedule and no warmup, one epoch, fp32 on the CPU with
2 threads, loss on responses only (`train_on_prompt: false`, LF's default), and
`disable_gradient_checkpointing: true` (LF turns gradient checkpointing on by default).

- `--neat`: `neat_packing: true`: LF packs examples into rows of `cutoff_len` tokens (greedy
  knapsack), pads each row to the full length, gives every example its own position ids and a
  4D block-diagonal causal mask (sdpa), so no example attends to another. Plain
  `packing: true` would let them attend to each other: not the same job.
  With packing LF takes one off `cutoff_len` and truncates each example there, so this baseline
  passes cutoff + 1 (an example of 512 tokens or more in the first 40 records was cut at 511 by
  LF and at 512 by the others: the token check caught it); rows then hold up to 512 tokens and
  are padded to 513 positions. LF's collator would pad those rows on to a multiple of 8 without
  padding their position ids (a shape error), so for neat runs its `pad_to_multiple_of` is
  set to None (it serves LF's shift-short-attention only; the rows are all one length already).
- without `--neat`: one example per row, padded to the longest row of the batch (LF pads to a
  multiple of 8).

Template: LF's `smollm2` with `default_system` set to the model's own system prompt (the one its
chat template adds when a conversation has none; LF's built-in default ends with a full stop the
model's does not have), so that LF's token ids and loss masks equal TRL's and tunesmith's.

The run is LF's own in-process entry, `llamafactory.train.tuner.run_exp(args)`, which is what
`llamafactory-cli train` calls on a machine with at most one device. Measured like the other two
children: tokens/s = real (attention-mask != 0) tokens of LF's prepared training set / wall time
around the trainer's `train()` call (wrapped on LF's `CustomSeq2SeqTrainer`; model loading and
tokenization excluded), peak RSS = this process's ru_maxrss, final loss = `train()`'s
`training_loss`. LF's own `train_runtime` metric is reported beside it.

`--bf16`: LF's own `bf16: true` (LF loads the weights in the folder's dtype, fp32 here, keeps
the LoRA parameters in fp32, and the Trainer autocasts to bf16 on the CPU): the `lf-neat-bf16`
run beside `lf-neat` (issue 20, item 3). `step_losses`: every optimizer step's loss, as
`training_step` returned it (tensors kept, read after the timed region).

    <lf-venv>/bin/python benchmarks/lf_baseline.py --model DIR [--records 200] [--neat] [--bf16]
        [--data FILE] [--result-file F]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# before torch is imported: 2 threads, CPU only, nothing from the network
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")  # LF's own dependency-version check
os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "WARN")

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/llamafactory/alpaca_en_demo.json"
SEED = 42
THREADS = 2
IGNORE_INDEX = -100
# what SmolLM2-135M-Instruct's chat template inserts when a conversation has no system turn
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def model_system_prompt(model_dir: Path) -> str:
    """The default system prompt of the model's own chat template (checked, not assumed)."""
    template_file = model_dir / "chat_template.jinja"
    if template_file.is_file():
        template = template_file.read_text(encoding="utf-8")
    else:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = config.get("chat_template") or ""
    if SMOLLM2_SYSTEM not in template:
        raise SystemExit(
            f"{model_dir}: the chat template does not hold SmolLM2's default system prompt "
            f"{SMOLLM2_SYSTEM!r}; this baseline maps only SmolLM2 onto LF's smollm2 template"
        )
    return SMOLLM2_SYSTEM


def lf_args(
    model_dir: str, dataset_dir: str, out_dir: str, neat: bool, cutoff: int, bf16: bool = False
) -> dict:
    return {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": model_dir,
        "trust_remote_code": False,
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target": "all",
        "dataset": "bench_alpaca",
        "dataset_dir": dataset_dir,
        "template": "smollm2",
        "default_system": model_system_prompt(Path(model_dir)),
        # with packing LF takes one off cutoff_len (hparams/data_args.py) and truncates there:
        # one more keeps the cut of the others (tunesmith, TRL) at `cutoff` tokens
        "cutoff_len": cutoff + 1 if neat else cutoff,
        "train_on_prompt": False,
        "neat_packing": neat,
        "packing": neat,
        "overwrite_cache": True,
        "preprocessing_num_workers": None,
        "output_dir": out_dir,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-4,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "num_train_epochs": 1.0,
        "bf16": bf16,
        "fp16": False,
        "disable_gradient_checkpointing": True,
        "seed": SEED,
        "logging_steps": 10,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "plot_loss": False,
        "dataloader_num_workers": 0,
        "use_cpu": True,
    }


def write_dataset(records: list[dict], folder: Path) -> None:
    """The alpaca records as LF reads them: a JSON file and a dataset_info.json naming it."""
    (folder / "bench_alpaca.json").write_text(json.dumps(records), encoding="utf-8")
    info = {"bench_alpaca": {"file_name": "bench_alpaca.json", "formatting": "alpaca"}}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder (safetensors + tokenizer)")
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--neat", action="store_true", help="neat_packing: true")
    parser.add_argument("--bf16", action="store_true", help="bf16: true (LF's own flag)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--result-file", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(THREADS)
    import llamafactory
    import peft
    import transformers
    import trl
    from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
    from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer
    from llamafactory.train.tuner import run_exp

    records = json.loads(Path(args.data).read_text(encoding="utf-8"))[: args.records]
    seen: dict = {}
    original_train = CustomSeq2SeqTrainer.train

    def timed_train(self, *train_args, **train_kwargs):
        prepared = self.train_dataset
        masks, labels = prepared["attention_mask"], prepared["labels"]
        seen["rows"] = len(masks)
        seen["real_tokens"] = sum(sum(1 for m in row if m != 0) for row in masks)
        seen["row_tokens"] = sum(len(row) for row in masks)
        seen["trainable_tokens"] = sum(sum(1 for t in row if t != IGNORE_INDEX) for row in labels)
        model = self.model
        seen["param_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
        seen["gradient_checkpointing"] = bool(getattr(model, "is_gradient_checkpointing", False))
        seen["attention"] = getattr(model.config, "_attn_implementation", None)
        seen["threads"] = torch.get_num_threads()
        step, losses = self.training_step, []

        def recorded(*step_args, **step_kwargs):
            loss = step(*step_args, **step_kwargs)
            losses.append(loss)
            return loss

        self.training_step = recorded
        seen["step_losses"] = losses
        started, cpu_started = time.perf_counter(), time.process_time()
        output = original_train(self, *train_args, **train_kwargs)
        seen["seconds"] = time.perf_counter() - started
        seen["cpu_seconds"] = time.process_time() - cpu_started  # all threads of this process
        seen["output"] = output
        seen["log_history"] = list(self.state.log_history)
        return output

    CustomSeq2SeqTrainer.train = timed_train
    original_post_init = SFTDataCollatorWith4DAttentionMask.__post_init__

    def post_init(self):
        original_post_init(self)
        if self.neat_packing:  # rows are cutoff + 1 long already; see lf_args
            self.pad_to_multiple_of = None

    SFTDataCollatorWith4DAttentionMask.__post_init__ = post_init
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(tmp) / "data"
        dataset_dir.mkdir()
        write_dataset(records, dataset_dir)
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "datasets-cache")
        out_dir = str(Path(tmp) / "out")
        run_exp(lf_args(args.model, str(dataset_dir), out_dir, args.neat, args.cutoff, args.bf16))
    CustomSeq2SeqTrainer.train = original_train
    if "seconds" not in seen:
        raise SystemExit("LLaMA-Factory returned without calling its trainer's train()")

    output = seen["output"]
    logged = [entry["loss"] for entry in seen["log_history"] if "loss" in entry]
    seconds = seen["seconds"]
    result = {
        "tool": "lf",
        "mode": ("neat" if args.neat else "padded") + ("-bf16" if args.bf16 else ""),
        "records": len(records),
        "rows": seen["rows"],
        "real_tokens": seen["real_tokens"],
        "row_tokens": seen["row_tokens"],
        "trainable_tokens": seen["trainable_tokens"],
        "steps": output.global_step,
        "train_seconds": round(seconds, 2),
        "train_cpu_seconds": round(seen["cpu_seconds"], 2),
        "lf_train_runtime": output.metrics.get("train_runtime"),
        "tokens_per_s": round(seen["real_tokens"] / seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_loss": output.training_loss,
        "last_logged_loss": logged[-1] if logged else None,
        "step_losses": [round(float(loss), 6) for loss in seen["step_losses"]],
        "threads": seen["threads"],
        "attention": seen["attention"],
        "gradient_checkpointing": seen["gradient_checkpointing"],
        "param_dtypes": seen["param_dtypes"],
        "versions": {
            "python": sys.version.split()[0],
            "llamafactory": llamafactory.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
        },
    }
    print(json.dumps(result))
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
