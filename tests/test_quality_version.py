"""Dataset versions: content hashes, version files and lineage across clean -> clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.convert import write_records
from tunesmith.data.quality.clean import CleanConfig, clean_records, write_clean_output
from tunesmith.data.quality.version import (
    dataset_hash,
    file_hash,
    format_lineage,
    lineage,
    metric_delta,
    read_meta,
    write_version,
)
from tunesmith.data.readers import read_records
from tunesmith.utils.errors import DataError

RECORDS = [
    {"instruction": "What is two plus two?", "input": "", "output": "Two plus two is four."},
    {"instruction": "Name a colour of the sky.", "input": "", "output": "The sky is often blue."},
    {
        "instruction": "北京是哪个国家的首都？",
        "input": "",
        "output": "北京是中华人民共和国的首都。",
    },
]


def test_hash_ignores_key_order_but_not_content_or_record_order():
    reordered = [dict(reversed(list(r.items()))) for r in RECORDS]
    assert dataset_hash(reordered) == dataset_hash(RECORDS)
    changed = [*RECORDS[:2], {**RECORDS[2], "output": "北京是中华人民共和国的首都!"}]
    assert dataset_hash(changed) != dataset_hash(RECORDS)
    assert dataset_hash(RECORDS[::-1]) != dataset_hash(RECORDS)
    assert dataset_hash([]) != dataset_hash([{}])


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_hash_is_the_same_whatever_the_file_format(tmp_path, suffix):
    jsonl, other = tmp_path / "a.jsonl", tmp_path / f"a{suffix}"
    write_records(jsonl, RECORDS)
    write_records(other, [dict(reversed(list(r.items()))) for r in RECORDS])
    from_jsonl = dataset_hash(r.data for r in read_records(jsonl))
    assert from_jsonl == dataset_hash(r.data for r in read_records(other)) == dataset_hash(RECORDS)
    assert file_hash(other) == from_jsonl


def test_write_version_records_parents_with_their_hashes(tmp_path):
    raw, versioned, child = tmp_path / "raw.jsonl", tmp_path / "v.jsonl", tmp_path / "c.jsonl"
    write_records(raw, RECORDS)
    write_records(versioned, RECORDS[:1])
    # A parent's version file is trusted as is (no re-read of a 100k-record file).
    versioned.with_name("v.jsonl.meta.json").write_text('{"hash": "feedface"}', encoding="utf-8")
    path = write_version(child, RECORDS[:2], "merge", {"k": 1}, [raw, versioned], {"n": 2})
    meta = json.loads(path.read_text(encoding="utf-8"))
    assert path == tmp_path / "c.jsonl.meta.json"
    assert meta["hash"] == dataset_hash(RECORDS[:2])
    assert meta["size"] == 2 and meta["operation"] == "merge"
    assert meta["params"] == {"k": 1} and meta["metrics"] == {"n": 2}
    assert meta["parents"] == [
        {"path": "raw.jsonl", "hash": dataset_hash(RECORDS)},
        {"path": "v.jsonl", "hash": "feedface"},
    ]
    assert meta["created"].endswith("+00:00")


def test_write_version_needs_existing_parents(tmp_path):
    with pytest.raises(DataError, match=r"missing\.jsonl: parent data file not found"):
        write_version(tmp_path / "c.jsonl", RECORDS, "x", {}, [tmp_path / "missing.jsonl"])


def test_unreadable_parent_is_hashed_by_its_bytes(tmp_path):
    text = tmp_path / "notes.md"
    text.write_text("free text", encoding="utf-8")
    write_version(tmp_path / "c.jsonl", RECORDS, "x", {}, [text])
    meta = read_meta(tmp_path / "c.jsonl")
    assert meta["parents"][0]["hash"].startswith("bytes:")


def _clean(src: Path, out: Path, **settings) -> dict:
    cfg = CleanConfig(**settings)
    return write_clean_output(clean_records([src], cfg), out, cfg, out.with_suffix(".rej.jsonl"))


@pytest.fixture
def two_cleans(tmp_path) -> tuple[Path, Path, Path]:
    """raw -> first (dedup only) -> second (length limits too)."""
    raw = tmp_path / "raw.jsonl"
    short = {"instruction": "Say hi to me.", "input": "", "output": "hi"}
    write_records(raw, [*RECORDS, RECORDS[0], short])
    first, second = tmp_path / "first.jsonl", tmp_path / "stage2" / "second.jsonl"
    _clean(raw, first, steps=["exact_dedup"])
    _clean(first, second, steps=["length"])
    return raw, first, second


def test_lineage_of_clean_then_clean_shows_both_steps_and_deltas(two_cleans):
    raw, first, second = two_cleans
    chain = lineage(second)
    assert [e["path"] for e in chain] == [str(raw), str(first), str(second)]
    assert [e["operation"] for e in chain] == [None, "clean", "clean"]
    assert chain[0]["notes"] == ["original input (no version file)"]
    assert chain[0]["hash"] == dataset_hash(r.data for r in read_records(raw))
    assert [e["size"] for e in chain[1:]] == [4, 3]
    assert chain[1]["params"]["steps"] == ["exact_dedup"]
    assert chain[2]["params"]["steps"] == ["length"]
    assert chain[1]["metrics"]["exact_duplicates"] == 1
    assert chain[1]["delta"] == {}  # raw input has no metrics to compare with
    delta = chain[2]["delta"]
    assert delta["read"] == -1 and delta["kept"] == -1 and delta["exact_duplicates"] == -1
    assert delta["pass_rate"] == pytest.approx(0.75 - 0.8)
    assert "pii_hits_by_kind" not in delta  # not a number
    assert chain[2]["parents"] == [str(first)]


def test_format_lineage_reads_top_down(two_cleans):
    raw, first, second = two_cleans
    text = format_lineage(lineage(second))
    lines = text.splitlines()
    assert lines[0].startswith(f"1. {raw}")
    assert any(line.startswith(f"2. {first}  [clean]  4 records") for line in lines)
    assert any(line.startswith(f"3. {second}  [clean]  3 records") for line in lines)
    assert "kept 3 (-1)" in text and "pass_rate 0.75 (-0.05)" in text
    assert "note: original input (no version file)" in text


def test_lineage_notes_a_missing_ancestor(two_cleans):
    raw, _, second = two_cleans
    raw.unlink()
    chain = lineage(second)
    assert chain[0]["notes"] == ["missing: no such file"]
    assert chain[0]["hash"] is not None  # the hash recorded by its child
    assert len(chain) == 3


def test_lineage_notes_a_parent_changed_since(two_cleans):
    raw, first, second = two_cleans
    write_records(first, RECORDS[:1])
    write_version(first, RECORDS[:1], "edit", {}, [raw])
    chain = lineage(second)
    assert [e["path"] for e in chain] == [str(first), str(second)]  # raw is no longer its past
    assert "changed since its child was made" in chain[0]["notes"][0]
    assert chain[1]["delta"] == {}


def test_lineage_survives_a_cycle(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_records(a, RECORDS)
    write_records(b, RECORDS[:2])
    write_version(b, RECORDS[:2], "clean", {}, [a])
    write_version(a, RECORDS, "clean", {}, [b])  # a rebuilt from b: a file is its own ancestor
    chain = lineage(a)
    assert [e["path"] for e in chain] == [str(a), str(b), str(a)]
    assert "cycle" in chain[0]["notes"][0]
    assert "cycle" in format_lineage(chain)


def test_lineage_of_an_unversioned_file_and_a_corrupt_version_file(tmp_path):
    data = tmp_path / "d.jsonl"
    write_records(data, RECORDS)
    assert lineage(data)[0]["notes"] == ["original input (no version file)"]
    Path(f"{data}.meta.json").write_text("{not json", encoding="utf-8")
    note = lineage(data)[0]["notes"][0]
    assert "d.jsonl.meta.json: not a valid version file" in note


def test_metric_delta_only_for_numbers_in_both():
    before = {"a": 1, "b": 2.5, "flag": True, "d": {"x": 1}, "gone": 3}
    after = {"a": 4, "b": 2.0, "flag": False, "d": {"x": 2}, "new": 1}
    assert metric_delta(before, after) == {"a": 3, "b": -0.5}
