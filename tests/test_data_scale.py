"""Data at scale (issue 20): streamed `clean`/`inspect` equal the in-memory results, the on-disk
dedup indexes find the same groups, --num-proc and Ray change nothing, memory stays bounded."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tunesmith.data.quality.analyze import count_distribution, distribution, inspect_data
from tunesmith.data.quality.clean import CleanConfig, clean_records, write_clean_output
from tunesmith.data.quality.clean_stream import clean_files
from tunesmith.data.quality.dedup import (
    canonical_text,
    exact_duplicate_groups,
    minhash_signatures,
    near_duplicate_groups,
)
from tunesmith.data.quality.spill import ExactIndex, NearIndex, text_digest

WORDS = [
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
]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _mutate(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(max(1, len(text) // 100)):
        chars[rng.randrange(len(chars))] = rng.choice("xyz")
    return "".join(chars)


def planted_lines(n: int = 400, seed: int = 3) -> list[str]:
    """JSON lines with every problem clean handles: exact copies (also after normalize only),
    near copies, PII, too short, Chinese and Russian, a sensitive word, broken lines."""
    rng = random.Random(seed)
    records: list[dict] = []
    lines: list[str] = []
    for i in range(n):
        roll = rng.random()
        if records and roll < 0.08:
            record = dict(rng.choice(records))  # exact copy
        elif records and roll < 0.16:
            src = rng.choice(records)
            record = {**src, "output": _mutate(src["output"], rng)}  # near copy
        elif records and roll < 0.2:
            src = rng.choice(records)
            record = {**src, "instruction": src["instruction"].replace(" ", "  ")}  # blanks
        elif roll < 0.23:
            lines.append('{"instruction": "broken", "output": ')
            continue
        else:
            output = " ".join(_sentence(rng, 12) for _ in range(3))
            if roll > 0.95:
                output += f" Mail user{i}@example.com or call 138{rng.randrange(10**8):08d}."
            elif roll > 0.92:
                output = "北京是中国的首都，有三千多年的建城史。" * 3
            elif roll > 0.9:
                output = "Сегодня в Москве солнечно и тепло, и мы идём гулять."
            elif roll > 0.88:
                output += " 机密"
            instruction = "Hi" if 0.86 < roll <= 0.88 else _sentence(rng, 8)
            record = {"instruction": instruction, "input": "", "output": output}
        records.append(record)
        lines.append(json.dumps(record, ensure_ascii=False))
    return lines


@pytest.fixture
def planted(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(planted_lines()) + "\n", encoding="utf-8")
    return path


def config(**overrides) -> CleanConfig:
    settings = {"sensitive_words": ["机密"], "languages": ["latin", "zh"], "min_quality_score": 60}
    return CleanConfig(**{**settings, **overrides})


def in_memory(paths: list[Path], cfg: CleanConfig, out: Path) -> dict:
    result = clean_records(paths, cfg)
    return write_clean_output(result, out / "clean.jsonl", cfg, out / "rejects.jsonl")


def streamed(paths: list[Path], cfg: CleanConfig, out: Path, **kwargs) -> dict:
    return clean_files(paths, cfg, out / "clean.jsonl", out / "rejects.jsonl", **kwargs)


def assert_same_files(a: Path, b: Path) -> None:
    """Same kept records, same rejects (order, reasons), same counts and metrics."""
    assert (a / "clean.jsonl").read_bytes() == (b / "clean.jsonl").read_bytes()
    assert (a / "rejects.jsonl").read_bytes() == (b / "rejects.jsonl").read_bytes()
    stats = [json.loads((d / "clean.jsonl.stats.json").read_text()) for d in (a, b)]
    for s in stats:
        for step in s["steps"]:
            step.pop("seconds")
    for key in ("format", "read", "kept", "rejected", "steps", "metrics"):
        assert stats[0][key] == stats[1][key], key
    metas = [json.loads((d / "clean.jsonl.meta.json").read_text()) for d in (a, b)]
    for key in ("hash", "size", "metrics", "parents", "params"):
        assert metas[0][key] == metas[1][key], key


def assert_balanced(out: Path, summary: dict) -> None:
    kept = (out / "clean.jsonl").read_text(encoding="utf-8").splitlines()
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").open(encoding="utf-8")]
    assert summary["read"] == len(kept) + len(rejects) == summary["kept"] + summary["rejected"]
    assert all(r["reason"] and r["step"] and r["line"] for r in rejects)
    steps = summary["steps"]
    for before, after in itertools.pairwise(steps):
        assert after["in"] == before["kept"]
    assert sum(s["rejected"] for s in steps) == len(rejects)


@pytest.mark.parametrize(
    "steps",
    [
        None,  # the default order: both dedup steps at the end
        ["exact_dedup", "normalize", "near_dedup", "length", "pii", "quality"],
        ["near_dedup", "normalize", "exact_dedup"],
    ],
)
def test_streamed_clean_equals_in_memory(tmp_path, planted, steps):
    cfg = config() if steps is None else config(steps=steps)
    a, b = tmp_path / "memory", tmp_path / "stream"
    in_memory([planted], cfg, a)
    summary = streamed([planted], cfg, b, chunk_size=7)  # many shards, shards cut groups
    assert_same_files(a, b)
    assert_balanced(b, summary)
    by_step = summary["metrics"]["rejected_by_step"]
    assert by_step["near_dedup"] > 5  # (near first: it takes the exact copies too)
    assert by_step.get("exact_dedup", 0) + by_step["near_dedup"] > 30
    assert by_step["parse"] > 3


def test_streamed_clean_two_files_and_json_output(tmp_path, planted):
    other = tmp_path / "more.jsonl"
    other.write_text("\n".join(planted_lines(120, seed=9)) + "\n", encoding="utf-8")
    cfg = config()
    a, b = tmp_path / "memory", tmp_path / "stream"
    result = clean_records([planted, other], cfg)
    write_clean_output(result, a / "clean.json", cfg, a / "rejects.jsonl")
    clean_files([planted, other], cfg, b / "clean.json", b / "rejects.jsonl", chunk_size=5)
    assert (a / "clean.json").read_bytes() == (b / "clean.json").read_bytes()
    assert (a / "rejects.jsonl").read_bytes() == (b / "rejects.jsonl").read_bytes()


def test_num_proc_two_equals_one(tmp_path, planted):
    cfg = config()
    one, two = tmp_path / "one", tmp_path / "two"
    streamed([planted], cfg, one, chunk_size=16)
    streamed([planted], cfg, two, chunk_size=16, num_proc=2)
    assert_same_files(one, two)
    serial = inspect_data([planted], chunk_size=16)
    parallel = inspect_data([planted], chunk_size=16, num_proc=2)
    assert serial == parallel


def test_cli_clean_num_proc(tmp_path, planted):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    outs = []
    for flags in ([], ["--num-proc", "2", "--work-dir", str(tmp_path)]):
        out = tmp_path / f"clean{len(flags)}.jsonl"
        args = ["data", "clean", str(planted), "--out", str(out), *flags, "languages=[latin,zh]"]
        done = CliRunner().invoke(app, args)
        assert done.exit_code == 0, done.output
        read = json.loads(Path(f"{out}.stats.json").read_text())["read"]
        assert f"{read} read = " in done.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert not list(tmp_path.glob("tunesmith-clean-*"))  # the spill files are gone


def test_ray_two_workers_equal_one_process(tmp_path, planted):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'tunesmith[ray]'")
    cfg = config()
    one, two = tmp_path / "one", tmp_path / "ray"
    streamed([planted], cfg, one, chunk_size=32)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        streamed([planted], cfg, two, chunk_size=32, num_proc=2, engine="ray")
        report = inspect_data([planted], chunk_size=32, num_proc=2, engine="ray")
    finally:
        ray.shutdown()
    assert_same_files(one, two)
    assert report == inspect_data([planted], chunk_size=32)


def test_inspect_does_not_depend_on_the_shards(planted):
    whole = inspect_data([planted], chunk_size=10**6)
    sharded = inspect_data([planted], chunk_size=3)
    assert whole == sharded
    # the duplicate sections agree with the in-memory groupings
    texts = []
    for line in planted.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        texts.append("\n".join(t for t in (r["instruction"], r["output"]) if t))
    exact = exact_duplicate_groups(texts)
    copies = {i for g in exact for i in g[1:]}
    keep = [i for i in range(len(texts)) if i not in copies]
    near = near_duplicate_groups([texts[i] for i in keep])
    dups = whole["duplicates"]
    assert dups["exact"]["clusters"] == len(exact) > 5
    assert dups["exact"]["records"] == sum(map(len, exact))
    assert dups["near"]["clusters"] == len(near) > 5
    assert dups["near"]["records"] == sum(map(len, near))


def test_counted_distribution_equals_the_list_one():
    rng = np.random.default_rng(0)
    for values in (
        rng.integers(0, 50, 1001).tolist(),
        rng.random(777).round(3).tolist(),
        [5],
        [1.5, 1.5, 2.0],
    ):
        assert count_distribution(Counter(values)) == distribution(values)


def test_disk_indexes_find_the_same_groups(tmp_path):
    rng = random.Random(1)
    texts = []
    for i in range(3000):
        if i > 10 and rng.random() < 0.1:
            texts.append(_mutate(rng.choice(texts), rng))
        elif i > 10 and rng.random() < 0.05:
            texts.append(rng.choice(texts).upper())  # an exact duplicate once canonical
        else:
            texts.append(" ".join(_sentence(rng, 12) for _ in range(3)))
    canonical = [canonical_text(t) for t in texts]
    exact = ExactIndex(tmp_path / "exact")
    near = NearIndex(tmp_path / "near", 0.8)
    for start in range(0, len(texts), 256):  # added shard by shard
        part = canonical[start : start + 256]
        exact.add([text_digest(t) for t in part])
        near.add(minhash_signatures(part, 5, 128, 1))
    copies, firsts = exact.duplicates()
    groups: dict[int, list[int]] = {}
    for copy, first in zip(copies.tolist(), firsts.tolist(), strict=True):
        groups.setdefault(first, [first]).append(copy)
    assert [groups[k] for k in sorted(groups)] == exact_duplicate_groups(texts)
    expected = near_duplicate_groups(texts)
    assert len(expected) > 100
    assert near.groups() == expected


_RSS_SCRIPT = """
import json, random, sys
from pathlib import Path
from tunesmith.data.quality.clean import CleanConfig
from tunesmith.data.quality.clean_stream import clean_files

work, n = Path(sys.argv[1]), int(sys.argv[2])
rng = random.Random(0)
words = "river city music garden paper light window market energy science".split()
with (work / "in.jsonl").open("w") as f:
    for i in range(n):
        if i and i % 25 == 0:
            line = last  # an exact duplicate every 25 records
        else:
            text = " ".join(rng.choice(words) for _ in range(6))
            line = json.dumps({"instruction": f"Q{i}", "output": text})
            last = line
        f.write(line + "\\n")
cfg = CleanConfig(steps=["exact_dedup", "near_dedup"])  # the two steps that hold state
summary = clean_files([work / "in.jsonl"], cfg, work / "out.jsonl", work_dir=work)
# VmHWM, not ru_maxrss: Linux carries the parent's RSS at fork into a child's ru_maxrss (a
# pytest process of some GB would set the bound), while exec starts VmHWM afresh
status = Path("/proc/self/status").read_text()
peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
print(json.dumps({"peak_mb": peak / 1024, **summary["metrics"]}))
"""


def test_memory_of_a_200k_record_clean_stays_bounded(tmp_path):
    # Measured 130 MB peak (98 MB of it the interpreter and imports) on 200k records; the
    # in-memory path holds every record and grows ~1.7 MB per 1k records (BENCHMARKS.md).
    # Not a timing test: ~50 s on a loaded 2-core host, most of it parsing and scoring.
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_RSS_SCRIPT), str(tmp_path), "200000"],
        capture_output=True,
        text=True,
        check=True,
    )
    m = json.loads(done.stdout.strip().splitlines()[-1])
    assert m["read"] == 200_000 == m["kept"] + m["rejected"]
    assert m["exact_duplicates"] == 7999 and m["near_duplicates"] > 0
    assert m["peak_mb"] < 230, m


def test_ray_is_optional(monkeypatch):
    # the engine module imports without Ray; asking for it without Ray says what to install
    from tunesmith.data.quality.engine import Executor
    from tunesmith.utils.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as uninstalled
    with pytest.raises(ConfigError, match=r"tunesmith\[ray\]"), Executor(2, "ray"):
        pass
