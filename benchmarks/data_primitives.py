"""Records per second of the data-quality primitives on generated records (~200 characters).

Half English, half Chinese, each with a few numbers, a time and a colon (so every PII pattern
has to run); every 10th record carries PII, every 20th is a near-copy of an earlier record
(three characters changed). Single process. `exact_index` / `near_index` are the on-disk
indexes that streamed `clean` and `inspect` use (data/quality/spill.py), fed in 2048-record
shards; `near_index` includes the signatures and must find the same groups as
`near_duplicate_groups` (checked).

    .venv/bin/python benchmarks/data_primitives.py [--records 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

EN_TEXT = (
    "the model learns from data and the quality of each record matters more than the size of "
    "the corpus so we clean filter and check every example before training starts today"
)
EN = EN_TEXT.split()
ZH = "数据质量决定模型效果我们需要清洗过滤检查每一条样本然后开始训练并评估结果是否可靠"
PII = ["13812345678", "test.user@example.com", "192.168.10.1", "4111 1111 1111 1111"]


def make_records(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    records: list[str] = []
    for i in range(n):
        if i % 20 == 19:
            text = list(records[rng.randrange(len(records))])
            for _ in range(3):
                text[rng.randrange(len(text))] = rng.choice("xyz数据")
            records.append("".join(text))
            continue
        if i % 2:
            text = "".join(rng.choice(ZH) for _ in range(200))
        else:
            text = " ".join(rng.choice(EN) for _ in range(40))[:200]
        numbers = f" {rng.randint(1, 2030)} {rng.randint(0, 23)}:{rng.randint(10, 59)} v1.2: "
        text = text[:50] + numbers + text[50:]
        if i % 10 == 0:
            text = text[:100] + " " + rng.choice(PII) + " " + text[100:]
        records.append(text)
    return records


def rate(fn, records: list[str]) -> tuple[float, float]:
    started = time.perf_counter()
    fn(records)
    seconds = time.perf_counter() - started
    return round(len(records) / seconds), round(seconds, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    n = parser.parse_args().records
    import tempfile

    from tunesmith.data.quality.dedup import (
        canonical_text,
        exact_duplicate_groups,
        minhash_signatures,
        near_duplicate_groups,
    )
    from tunesmith.data.quality.pii import find_pii
    from tunesmith.data.quality.spill import ExactIndex, NearIndex, text_digest
    from tunesmith.data.quality.text import detect_language, normalize_text

    def exact_index(rs: list[str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            index = ExactIndex(tmp)
            for start in range(0, len(rs), 2048):
                index.add([text_digest(canonical_text(r)) for r in rs[start : start + 2048]])
            index.duplicates()

    def near_index(rs: list[str]) -> list[list[int]]:
        with tempfile.TemporaryDirectory() as tmp:
            index = NearIndex(tmp, 0.8)
            for start in range(0, len(rs), 2048):
                part = [canonical_text(r) for r in rs[start : start + 2048]]
                index.add(minhash_signatures(part, 5, 128, 1))
            return index.groups()

    records = make_records(n)
    results = {}
    for name, fn in [
        ("find_pii", lambda rs: [find_pii(r) for r in rs]),
        ("normalize_text", lambda rs: [normalize_text(r) for r in rs]),
        ("detect_language", lambda rs: [detect_language(r) for r in rs]),
        ("exact_duplicate_groups", exact_duplicate_groups),
        ("near_duplicate_groups", near_duplicate_groups),
        ("exact_index", exact_index),
        ("near_index", near_index),
    ]:
        per_second, seconds = rate(fn, records)
        results[name] = {"records_per_second": per_second, "seconds": seconds}
    groups = near_duplicate_groups(records[: min(n, 20_000)])
    if near_index(records[: min(n, 20_000)]) != groups:
        raise SystemExit("near_index found other groups than near_duplicate_groups")
    print(
        json.dumps(
            {
                "records": n,
                "results": results,
                "near_dup_groups_in_first_20k": len(groups),
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
