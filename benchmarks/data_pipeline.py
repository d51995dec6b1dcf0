"""Inspect and clean 100k generated alpaca records with planted problems (issue 3).

Reports records/s for `inspect` and `clean` (near-dedup included), and precision / recall of
the planted near-duplicates and PII against what clean rejected or redacted.
Target on 2 cores: each under 60 s for 100k records; near-dup recall > 0.9 at precision > 0.95.

    .venv/bin/python benchmarks/data_pipeline.py [--records 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from tunesmith.data.quality.analyze import inspect_data
from tunesmith.data.quality.clean import CleanConfig, clean_records

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


def generate(n: int, seed: int = 0) -> tuple[list[dict], set[int], set[int]]:
    """Records, the indices of planted near-duplicates, and the indices with planted PII."""
    rng = random.Random(seed)
    records, near, pii = [], set(), set()
    for i in range(n):
        roll = rng.random()
        if roll < 0.03 and i > 10:  # near-duplicate of an earlier original record
            src = records[rng.randrange(i)]
            records.append({**src, "output": _mutate(src["output"], rng)})
            near.add(i)
            continue
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
            pii.add(i)
        records.append({"instruction": instruction, "input": "", "output": output})
    return records, near, pii


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    records, near, _ = generate(args.records)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

        start = time.perf_counter()
        inspect_data([str(path)])
        inspect_s = time.perf_counter() - start

        start = time.perf_counter()
        result = clean_records([str(path)], CleanConfig())
        clean_s = time.perf_counter() - start

    # jsonl: record i is on line i + 1. Near-duplicate copies of a PII record carry PII too.
    flagged_near = {r["line"] - 1 for r in result.rejects if r["step"] == "near_dedup"}
    has_pii = {i for i, r in enumerate(records) if "Contact: " in r["output"]}
    kept_pii = {c.line - 1 for c in result.kept if "[" in c.messages[-1]["content"]}
    kept = {c.line - 1 for c in result.kept}
    true_near = len(flagged_near & near)
    print(
        json.dumps(
            {
                "records": len(records),
                "inspect_seconds": round(inspect_s, 1),
                "inspect_records_per_s": round(len(records) / inspect_s),
                "clean_seconds": round(clean_s, 1),
                "clean_records_per_s": round(len(records) / clean_s),
                "near_dup_recall": round(true_near / max(1, len(near)), 4),
                "near_dup_precision": round(true_near / max(1, len(flagged_near)), 4),
                "pii_recall": round(len(kept_pii & has_pii) / max(1, len(has_pii & kept)), 4),
                "pii_precision": round(len(kept_pii & has_pii) / max(1, len(kept_pii)), 4),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
