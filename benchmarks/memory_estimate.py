"""How close is `tunesmith plan`'s memory estimate to the real peak of a training run?

For each configuration, a fresh Python process imports the training stack, notes its RSS,
trains the embedded SmolLM2-135M (CPU, fp32) for a few steps through the normal
`tunesmith train` path, and reports its peak RSS (getrusage maxrss). The planner's prediction
of what training adds (estimate.training: everything but the process baseline) is compared
with the measured peak minus that baseline.

    .venv/bin/python benchmarks/memory_estimate.py            # all configurations
    .venv/bin/python benchmarks/memory_estimate.py full-256 lora8-256  # some of them
    .venv/bin/python benchmarks/memory_estimate.py --store m.json  # keep / reuse measurements

The training data: alpaca records whose answers run past cutoff_len, so every example is
cutoff_len tokens long (the planner's worst case is then the actual case).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = "smollm2-135m-instruct"
STEPS = 2  # the peak comes at step 2: Adam states exist and activations are held
# name -> (method section, cutoff_len, gradient checkpointing)
CONFIGS: dict[str, tuple[dict, int, bool]] = {
    "full-256": ({"type": "full"}, 256, False),
    "full-256-gc": ({"type": "full"}, 256, True),
    "full-512": ({"type": "full"}, 512, False),
    "lora8-256": ({"type": "lora", "r": 8}, 256, False),
    "lora64-512": ({"type": "lora", "r": 64}, 512, False),
    "lora8-512-gc": ({"type": "lora", "r": 8}, 512, True),
    "freeze2-256": ({"type": "freeze", "trainable_layers": 2}, 256, False),
    "prefix-256": ({"type": "prefix", "num_virtual_tokens": 10}, 256, False),
    "ia3-512": ({"type": "ia3"}, 512, False),
    "adapter-256": ({"type": "adapter", "adapter_size": 64}, 256, False),
    "adapter-512-gc": ({"type": "adapter", "adapter_size": 64}, 512, True),
    # held out: added after the estimator's constants were fitted on the runs above
    "lora16-384": ({"type": "lora", "r": 16, "target_modules": ["q_proj", "v_proj"]}, 384, False),
    "ia3-384-gc": ({"type": "ia3"}, 384, True),
}
BATCH = 2
# classification on the embedded encoder (stage cls, MiniLM: attention dropout 0.1, so on CPU
# attention keeps its probabilities): name -> (method, cutoff_len, batch)
CLS_CONFIGS: dict[str, tuple[dict, int, int]] = {
    "cls-lora8-512-b8": ({"type": "lora", "r": 8}, 512, 8),
    "cls-lora8-512-b16": ({"type": "lora", "r": 8}, 512, 16),
    "cls-full-256-b16": ({"type": "full"}, 256, 16),
    # held out: measured after the encoder block was calibrated on the three above
    "cls-full-512-b8": ({"type": "full"}, 512, 8),
    "cls-lora8-256-b32": ({"type": "lora", "r": 8}, 256, 32),
}


def write_data(path: Path, records: int = 16) -> None:
    words = [
        "the",
        "model",
        "learns",
        "to",
        "answer",
        "questions",
        "about",
        "numbers",
        "and",
        "words",
        "in",
        "order",
    ]
    rows = []
    for i in range(records):
        answer = " ".join(f"{words[(i + k) % len(words)]} {k}" for k in range(400))
        rows.append({"instruction": f"Count for me, please ({i}).", "input": "", "output": answer})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def write_cls_data(path: Path, records: int = 48) -> None:
    """Texts longer than 512 tokens, so every batch is cutoff_len long."""
    rows = ["text,label"]
    for i in range(records):
        rows.append(f'"{" ".join(f"word{(i * k) % 97} number {k}" for k in range(300))}",c{i % 3}')
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def cls_config(name: str, data: Path, out: Path) -> dict:
    method, cutoff, batch = CLS_CONFIGS[name]
    return {
        "model": {"name_or_path": "minilm-l6"},
        "method": method,
        "data": {"train": [str(data)], "cutoff_len": cutoff},
        "train": {
            "stage": "cls",
            "max_steps": STEPS,
            "batch_size": batch,
            "save_steps": 10_000,
            "logging_steps": 1,
            "cls": {"long_text": "head", "val_fraction": 0.0},
        },
        "output": {"dir": str(out), "name": name, "overwrite": True},
    }


def run_config(name: str, data: Path, out: Path) -> dict:
    if name in CLS_CONFIGS:
        return cls_config(name, data.with_suffix(".csv"), out)
    method, cutoff, gc = CONFIGS[name]
    return {
        "model": {"name_or_path": MODEL},
        "method": method,
        "data": {"train": [str(data)], "cutoff_len": cutoff},
        "train": {
            "max_steps": STEPS,
            "batch_size": BATCH,
            "gradient_checkpointing": gc,
            "save_steps": 10_000,
            "logging_steps": 1,
        },
        "output": {"dir": str(out), "name": name, "overwrite": True},
    }


def child(config_json: str) -> None:
    """Runs in a fresh process: baseline RSS after the imports, then peak RSS of training."""
    import resource

    import peft  # noqa: F401  (imports that training does, before the baseline)
    import transformers  # noqa: F401

    import tunesmith.train.cls
    import tunesmith.train.sft  # noqa: F401
    from tunesmith.config.schema import RunConfig
    from tunesmith.models.methods import adapter  # noqa: F401
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train import run_stage

    config = RunConfig.model_validate(json.loads(config_json))
    base = _rss()
    run_stage(config, RunFolder.create(config.output, "bench"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print("RESULT " + json.dumps({"base": base, "peak": peak}))


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no /proc/self/status: this benchmark needs Linux")


def predict(config_dict: dict) -> dict:
    from tunesmith.config.schema import RunConfig
    from tunesmith.plan.data import data_stats
    from tunesmith.plan.estimate import estimate, model_facts
    from tunesmith.plan.planner import _tokenizer

    config = RunConfig.model_validate(config_dict)
    facts = model_facts(config.model.name_or_path)
    data = data_stats(config, _tokenizer(config))
    return estimate(facts, config, "cpu", data).as_dict()


def measure(name: str, cfg: dict) -> int | None:
    """Peak RSS minus the baseline of a fresh process training `cfg`; None if it failed."""
    result = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True
    )
    lines = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    if result.returncode or not lines:
        print(f"{name}: failed\n{result.stderr[-2000:]}", flush=True)
        return None
    measured = json.loads(lines[-1][7:])
    print(f"{name}: baseline {measured['base'] / 2**20:.0f} MiB", flush=True)
    return measured["peak"] - measured["base"]


def main(names: list[str], store: Path | None) -> None:
    """Measure (or reuse the measurements in `store`: they do not depend on the estimator)
    and compare with the planner's prediction."""
    names = names or [*CONFIGS, *CLS_CONFIGS]
    unknown = [n for n in names if n not in CONFIGS and n not in CLS_CONFIGS]
    if unknown:
        sys.exit(f"unknown configurations {unknown}; choose from {[*CONFIGS, *CLS_CONFIGS]}")
    from tunesmith.models.methods import METHODS

    stored = json.loads(store.read_text()) if store and store.is_file() else {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        write_data(data)
        write_cls_data(data.with_suffix(".csv"))
        for name in names:
            method = (CONFIGS.get(name) or CLS_CONFIGS[name])[0]
            if method["type"] not in METHODS:
                print(f"{name}: method not implemented yet, skipped", flush=True)
                continue
            cfg = run_config(name, data, Path(tmp) / "runs")
            delta = stored.get(name) or measure(name, cfg)
            if delta is None:
                continue
            if store:
                stored[name] = delta
                store.write_text(json.dumps(stored, indent=1))
            pred = predict(cfg)
            err = 100 * (pred["training"] - delta) / delta
            rows.append((name, delta, pred, err))
            print(
                f"{name:16s} measured {delta / 2**20:7.0f} MiB  predicted "
                f"{pred['training'] / 2**20:7.0f} MiB  error {err:+6.1f}%  (activations "
                f"{pred['activations'] / 2**20:.0f}, logits {pred['logits'] / 2**20:.0f})",
                flush=True,
            )
    print("\n| config | measured peak - baseline (MiB) | predicted (MiB) | error |")
    print("|---|---|---|---|")
    for name, delta, pred, err in rows:
        print(f"| {name} | {delta / 2**20:.0f} | {pred['training'] / 2**20:.0f} | {err:+.1f}% |")
    worst = max((abs(r[3]) for r in rows), default=0.0)
    print(f"\nworst error {worst:.1f}% over {len(rows)} configurations (target: 15%)")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        args = sys.argv[1:]
        store = None
        if "--store" in args:  # --store FILE: keep measurements there, reuse them next time
            at = args.index("--store")
            store, args = Path(args[at + 1]), args[:at] + args[at + 2 :]
        main(args, store)
