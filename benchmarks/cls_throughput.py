"""Classification throughput: tunesmith's cls stage against a plain transformers Trainer + PEFT
script of the same job (issue 18, item 3).

The job: the embedded encoder all-MiniLM-L6-v2 (`minilm-l6`), LoRA r 8 / alpha 16 / dropout 0
on all linear layers plus the new head, the 5-class real-text set of benchmarks/cls_data.py
(LLaMA-Factory's demo corpora; --per-class N texts per class of very mixed lengths, 80% for
training and 20% held out), at most 512 tokens per text, batch 8, lr 1e-3 linear, no warmup,
1 epoch, fp32 on the CPU with 2 threads, no validation during training.

Runs, each in its own subprocess:
- `tunesmith`: `tunesmith train` with the stage's defaults (train.sampling auto, which picks
  random batches on this set because the label sets the length; the long-text strategy its
  data calls for; train.optimize: padding-free batches (models/packed_encoder.py) and the
  speed levers of models/speed.py);
- `tunesmith-random`: the defaults with train.sampling=random named (the same run where auto
  picks random; on a set whose lengths do not follow the label auto would group them);
- `tunesmith-grouped`: the defaults with length-grouped batches forced (fast where it is safe;
  on this set the batches hold one label each and the model learns less);
- `tunesmith-plain`: the same stage with those defaults switched off (random batches, texts cut
  at the end, train.optimize=false): where the gain comes from;
- `trainer-peft`: the script most users write: AutoModelForSequenceClassification, PEFT
  `get_peft_model` (task SEQ_CLS), texts tokenized with truncation to 512, DataCollatorWithPadding,
  transformers' Trainer with its default random sampler.

tokens/s = real (non-padding) tokens trained / wall time of `Trainer.train()` (loading and
tokenization excluded); accuracy and macro F1 on the 300 held-out texts, each tool predicting
as it trained. The ratios are against trainer-peft of the same round.

    .venv/bin/python benchmarks/cls_throughput.py [--runs tunesmith,tunesmith-plain,trainer-peft]
        [--repeat N] [--per-class 300] [--json-out FILE]
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

import cls_data  # noqa: E402

RUNS = ("tunesmith", "tunesmith-random", "tunesmith-grouped", "tunesmith-plain", "trainer-peft")
THREADS = 2
SEED = 42
BATCH, LR, MAX_LENGTH, RANK, ALPHA = 8, 1e-3, 512, 8, 16
CHILD_ENV = {
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "",
}


def tunesmith_overrides(train: str, out_dir: str, name: str) -> list[str]:
    overrides = [
        "train.stage=cls",
        "model.name_or_path=minilm-l6",
        "model.dtype=float32",
        f"data.train=[{train}]",
        f"data.cutoff_len={MAX_LENGTH}",
        "method.type=lora",
        f"method.r={RANK}",
        f"method.alpha={ALPHA}",
        "method.dropout=0.0",
        "method.target_modules=all-linear",
        f"train.batch_size={BATCH}",
        f"train.learning_rate={LR}",
        "train.lr_scheduler=linear",
        "train.warmup_ratio=0",
        "train.weight_decay=0",
        "train.epochs=1",
        "train.precision=fp32",
        "train.cls.val_fraction=0",
        f"train.seed={SEED}",
        "train.save_steps=1000000",
        "train.logging_steps=10",
        f"output.dir={out_dir}",
        "output.name=bench",
    ]
    if name == "tunesmith-plain":
        overrides += ["train.sampling=random", "train.cls.long_text=head", "train.optimize=false"]
    if name == "tunesmith-random":  # the defaults with random batches (no length grouping)
        overrides += ["train.sampling=random"]
    if name == "tunesmith-grouped":
        overrides += ["train.sampling=group_by_length"]
    return overrides


class Timed:
    """Wraps a Trainer class's train(): its wall time, the real tokens of its dataset and the
    tokens its batches computed (padding included: how much padding the batches carried)."""

    def __init__(self, trainer_cls):
        self.cls, self.result = trainer_cls, {"computed": 0}
        self.original, self.original_step = trainer_cls.train, trainer_cls.training_step

    def __enter__(self):
        timed = self

        def train(trainer, *args, **kwargs):
            started = time.perf_counter()
            output = timed.original(trainer, *args, **kwargs)
            timed.result["seconds"] = time.perf_counter() - started
            timed.result["tokens"] = sum(len(e["input_ids"]) for e in trainer.train_dataset)
            timed.result["steps"] = output.global_step
            timed.result["loss"] = output.training_loss
            return output

        def training_step(trainer, model, inputs, *args, **kwargs):
            timed.result["computed"] += computed_tokens(trainer, inputs)
            return timed.original_step(trainer, model, inputs, *args, **kwargs)

        self.cls.train, self.cls.training_step = train, training_step
        return self

    def __exit__(self, *exc):
        self.cls.train, self.cls.training_step = self.original, self.original_step


def computed_tokens(trainer, inputs) -> int:
    """Positions the layers compute for a batch: padded, or for tunesmith's padding-free
    batches (models/packed_encoder.py) the real tokens rounded up to its row multiple."""
    if getattr(trainer, "packed", False):
        from tunesmith.models.packed_encoder import ROW_MULTIPLE

        real = int(inputs["attention_mask"].sum())
        return real + -real % ROW_MULTIPLE
    return inputs["input_ids"].numel()


def tunesmith_child(name: str, data: dict) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    from tunesmith.config.load import load_config
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train.cls import ClsTrainer, predict_labels, run_cls

    with tempfile.TemporaryDirectory() as out, Timed(ClsTrainer) as timed:
        config = load_config(None, tunesmith_overrides(data["train"], out, name))
        result = run_cls(config, RunFolder.create(config.output, "cls"))
        test = _read(data["test"])
        predicted = predict_labels(result.run.root, [r["text"] for r in test])
        long_text = result.summary["data"]["long_text"]["strategy"]
        trainable = result.summary["trainable_parameters"]
    return _result(name, timed.result, test, predicted, trainable) | {"long_text": long_text}


def trainer_peft_child(data: dict) -> dict:
    """The plain script: every line what the transformers and PEFT docs show."""
    import torch

    torch.set_num_threads(THREADS)
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from tunesmith.models.resolve import resolve_model

    set_seed(SEED)
    path = resolve_model("minilm-l6").path
    train, test = _read(data["train"]), _read(data["test"])
    labels = sorted({r["label"] for r in train})
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels))
    )
    lora = LoraConfig(
        task_type="SEQ_CLS", r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear"
    )
    model = get_peft_model(model, lora)
    encoded = tokenizer(
        [r["text"] for r in train], truncation=True, max_length=MAX_LENGTH
    ).data  # a dict of lists
    dataset = [
        {k: v[i] for k, v in encoded.items()} | {"labels": labels.index(r["label"])}
        for i, r in enumerate(train)
    ]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            num_train_epochs=1,
            learning_rate=LR,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            logging_steps=10,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=SEED,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        with Timed(Trainer) as timed:
            trainer.train()
    model.eval()
    predicted = []
    with torch.no_grad():
        for start in range(0, len(test), 32):
            texts = [r["text"] for r in test[start : start + 32]]
            batch = tokenizer(
                texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt"
            )
            predicted += [labels[i] for i in model(**batch).logits.argmax(-1).tolist()]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return _result("trainer-peft", timed.result, test, predicted, trainable)


def _read(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def _result(name: str, timing: dict, test: list[dict], predicted: list, trainable: int) -> dict:
    from sklearn.metrics import f1_score

    truth = [r["label"] for r in test]
    right = sum(p == t for p, t in zip(predicted, truth, strict=True))
    return {
        "run": name,
        "real_tokens": timing["tokens"],
        "computed_tokens": timing["computed"],
        "steps": timing["steps"],
        "train_seconds": round(timing["seconds"], 2),
        "tokens_per_s": round(timing["tokens"] / timing["seconds"], 1),
        "train_loss": round(timing["loss"], 4),
        "test_accuracy": round(right / len(truth), 4),
        "test_f1_macro": round(f1_score(truth, predicted, average="macro"), 4),
        "trainable_parameters": trainable,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def launch(name: str, data: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", name, "--data", json.dumps(data)]
        cmd += ["--result-file", str(result_file)]
        print(f"=== {name}", flush=True)
        proc = subprocess.run(cmd, env={**os.environ, **CHILD_ENV}, check=False)
        if proc.returncode != 0 or not result_file.is_file():
            raise SystemExit(f"{name} failed (exit code {proc.returncode})")
        return json.loads(result_file.read_text(encoding="utf-8"))


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["run"] == "trainer-peft"), None)
    lines = [
        "| run | long text | real tokens | computed (padded) | steps | train s | tokens/s "
        "| vs trainer-peft | test acc | test F1 | trainable | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "n/a"
        lines.append(
            f"| {r['run']} | {r.get('long_text', 'head')} | {r['real_tokens']:,} "
            f"| {r['computed_tokens']:,} | {r['steps']} "
            f"| {r['train_seconds']:.1f} | {r['tokens_per_s']:.1f} | {ratio} "
            f"| {r['test_accuracy']:.3f} | {r['test_f1_macro']:.3f} "
            f"| {r['trainable_parameters']:,} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds, alternating the order")
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--json-out")
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        data = json.loads(args.data)
        child = trainer_peft_child if args.child == "trainer-peft" else None
        result = child(data) if child else tunesmith_child(args.child, data)
        Path(args.result_file).write_text(json.dumps(result), encoding="utf-8")
        return

    if not cls_data.available():
        raise SystemExit(f"{cls_data.SHARED}: LLaMA-Factory's demo data is not there")
    import torch

    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    names = args.runs.split(",")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        data = cls_data.build(Path(tmp), per_class=args.per_class)
        for i in range(args.repeat):
            order = names if i % 2 == 0 else names[::-1]
            results = sorted((launch(n, data) for n in order), key=lambda r: names.index(r["run"]))
            rounds.append(results)
            print(table(results), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rounds, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
