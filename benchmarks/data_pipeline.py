"""Inspect and clean generated alpaca records with planted problems (issues 3 and 20).

Per point (--records, repeatable): time, peak RSS and records/s of `inspect` and `clean`
(near-dedup included), and precision / recall of the planted near-duplicates and PII against
what clean rejected or redacted. The records are generated into a temporary folder (never
committed) one at a time, so 10M records need no more memory than 10k; each stage runs in its
own process, which reports its own peak RSS and that of its largest worker.

Targets on 2 cores: 100k records under 60 s per stage; near-dup recall and precision >= 0.99;
peak RSS bounded (<= 3 GB at 10M records) and time linear in the record count.

    .venv/bin/python benchmarks/data_pipeline.py [--records 100000 ...] [--num-proc N]
        [--work-dir DIR] [--stages inspect,clean]

10M records need ~20 GB of free disk in --work-dir (input 3.4 GB; clean's spill and signatures
~9.5 GB; the output ~3 GB), measured at 200k: 67 MB input, 185 MB of spill files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = [
    "model",
    "data",
    "train",
    "learn",
    "value",
    "system",
    "answer",
    "question",
    "river",
    "city",
    "music",
    "garden",
    "paper",
    "light",
    "window",
    "market",
    "energy",
    "science",
    "history",
    "planet",
    "animal",
    "ocean",
    "forest",
    "mountain",
    "language",
    "number",
]
ZH = "我们今天学习数据模型训练问题回答系统城市音乐花园历史科学动物海洋森林山语言数字"
POOL = 100_000  # earlier records a near-duplicate may copy (a uniform reservoir sample)


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _zh(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ZH) for _ in range(n)) + "。"


def _mutate(text: str, rng: random.Random) -> str:
    """A near-duplicate: one character changed per 100 (typo-level edits). With 5-gram shingles
    each edit touches 5 shingles, so the copy stays above the default 0.8 Jaccard threshold."""
    chars = list(text)
    for _ in range(max(1, len(text) // 100)):
        i = rng.randrange(len(chars))
        chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz")
    return "".join(chars)


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def generate(n: int, path: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write n records to `path` (JSON lines); return (planted near-duplicate, planted PII)
    as boolean arrays over the record index. A near-duplicate copies an earlier original drawn
    from a uniform reservoir of up to POOL records, so memory stays flat at any n."""
    rng = random.Random(seed)
    near, pii = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    pool: list[dict] = []
    originals = 0
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            roll = rng.random()
            if roll < 0.03 and i > 10:  # near-duplicate of an earlier original record
                src = pool[rng.randrange(len(pool))]
                record = {**src, "output": _mutate(src["output"], rng)}
                near[i] = True
            else:
                chinese = rng.random() < 0.2
                instruction = _zh(rng, 12) if chinese else _sentence(rng, 10)
                output = _zh(rng, 80) if chinese else " ".join(_sentence(rng, 12) for _ in range(3))
                if roll > 0.97:
                    kind = rng.choice(("email", "mobile", "card"))
                    planted = {
                        "email": f"user{i}@example.com",
                        "mobile": f"138{rng.randrange(10**8):08d}",
                        "card": _luhn_card(rng),
                    }[kind]
                    output += f" Contact: {planted}"
                    pii[i] = True
                record = {"instruction": instruction, "input": "", "output": output}
                originals += 1
                if len(pool) < POOL:
                    pool.append(record)
                elif (j := rng.randrange(originals)) < POOL:
                    pool[j] = record
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return near, pii


def _stage(args: argparse.Namespace) -> None:
    """Child process: run one stage on the generated file and print its measurements."""
    from tunesmith.data.quality.analyze import inspect_data
    from tunesmith.data.quality.clean import CleanConfig
    from tunesmith.data.quality.clean_stream import clean_files

    work = Path(args.work)
    start = time.perf_counter()
    if args.stage == "inspect":
        report = inspect_data(
            [str(work / "bench.jsonl")], num_proc=args.num_proc, work_dir=str(work)
        )
        extra = {"valid": report["records"]["valid"]}
    else:
        summary = clean_files(
            [work / "bench.jsonl"],
            CleanConfig(),
            work / "clean.jsonl",
            work / "rejects.jsonl",
            num_proc=args.num_proc,
            work_dir=str(work),
        )
        extra = {"kept": summary["kept"], "rejected": summary["rejected"]}
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": own, "worker_rss_mb": workers, **extra}))


def _run_stage(stage: str, work: Path, num_proc: int) -> dict:
    command = [sys.executable, __file__, "--stage", stage, "--work", str(work)]
    command += ["--num-proc", str(num_proc)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{stage} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _quality(work: Path, near: np.ndarray, pii: np.ndarray) -> dict:
    """Near-dup recall/precision from rejects.jsonl; PII from the kept records (record i is on
    line i + 1; the kept file holds the lines nobody rejected, in order)."""
    n = len(near)
    flagged, rejected = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    with (work / "rejects.jsonl").open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            rejected[r["line"] - 1] = True
            flagged[r["line"] - 1] |= r["step"] == "near_dedup"
    # near-duplicate copies of a PII record carry PII too
    has_pii = np.zeros(n, dtype=bool)
    kept_pii = np.zeros(n, dtype=bool)
    kept = ~rejected
    with (work / "bench.jsonl").open(encoding="utf-8") as src:
        for i, line in enumerate(src):
            has_pii[i] = "Contact: " in line
    with (work / "clean.jsonl").open(encoding="utf-8") as out:
        for i, line in zip(np.flatnonzero(kept).tolist(), out, strict=True):
            kept_pii[i] = "[" in json.loads(line)["output"]
    true_near = int((flagged & near).sum())
    true_pii = int((kept_pii & has_pii).sum())
    return {
        "near_dup_recall": round(true_near / max(1, int(near.sum())), 4),
        "near_dup_precision": round(true_near / max(1, int(flagged.sum())), 4),
        "pii_recall": round(true_pii / max(1, int((has_pii & kept).sum())), 4),
        "pii_precision": round(true_pii / max(1, int(kept_pii.sum())), 4),
        "planted_pii": int(pii.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, action="append")
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--work-dir", help="where the generated data and spill files go")
    parser.add_argument("--stages", default="inspect,clean")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # child process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        _stage(args)
        return
    stages = [s for s in args.stages.split(",") if s]
    for n in args.records or [100_000]:
        with tempfile.TemporaryDirectory(prefix="tunesmith-bench-", dir=args.work_dir) as tmp:
            work = Path(tmp)
            start = time.perf_counter()
            near, pii = generate(n, work / "bench.jsonl")
            point = {"records": n, "num_proc": args.num_proc, "cpus": os.cpu_count()}
            point["generate_seconds"] = round(time.perf_counter() - start, 1)
            point["input_mb"] = (work / "bench.jsonl").stat().st_size // 2**20
            for stage in stages:
                m = _run_stage(stage, work, args.num_proc)
                point[f"{stage}_seconds"] = round(m["seconds"], 1)
                point[f"{stage}_records_per_s"] = round(n / m["seconds"])
                point[f"{stage}_peak_rss_mb"] = m["peak_rss_mb"]
                if args.num_proc > 1:
                    point[f"{stage}_worker_peak_rss_mb"] = m["worker_rss_mb"]
            if "clean" in stages:
                point |= _quality(work, near, pii)
            print(json.dumps(point), flush=True)


if __name__ == "__main__":
    main()
