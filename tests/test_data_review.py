"""Human review (data/review.py, `tunesmith data review`): stratified sample, decisions applied
as a new version with lineage, and every bad review line refused with its file:line."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.data.quality.version import dataset_hash, lineage, read_meta
from tunesmith.data.review import (
    apply_review,
    review_entries,
    review_sample,
    stratum_values,
    write_review_file,
)
from tunesmith.utils.errors import DataError, TunesmithError

runner = CliRunner()


def _records(n_math: int = 60, n_code: int = 30, n_chat: int = 10) -> list[dict]:
    """Categories of unequal size, two sources, lengths spread so quartiles differ."""
    cats = ["math"] * n_math + ["code"] * n_code + ["chat"] * n_chat
    return [
        {
            "instruction": f"question {i} " + "x" * (i % 37),
            "input": "",
            "output": f"answer {i}",
            "category": cat,
            "source": "web" if i % 3 else "books",
        }
        for i, cat in enumerate(cats)
    ]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _decide(review: Path, decisions: dict[int, dict]) -> None:
    """Fill in the review file's lines by position, as a reviewer would."""
    rows = _rows(review)
    for n, fields in decisions.items():
        rows[n].update(fields)
    _jsonl(review, rows)


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


# --- sampling -----------------------------------------------------------------------------


def test_every_stratum_is_represented_in_proportion():
    records = _records()
    sample = review_sample(records, 0.1, strata=("category",))
    by_cat = Counter(records[s.index]["category"] for s in sample)
    assert by_cat == {"math": 6, "code": 3, "chat": 1}
    assert all(s.stratum == {"category": records[s.index]["category"]} for s in sample)


def test_a_small_stratum_gets_at_least_one_record():
    records = _records(n_math=95, n_code=4, n_chat=1)
    by_cat = Counter(
        records[s.index]["category"] for s in review_sample(records, 0.1, ["category"])
    )
    assert by_cat["chat"] == 1 and by_cat["code"] == 1
    assert by_cat["math"] in (9, 10)  # its share; the small strata may push the total over


def test_length_strata_are_quartile_buckets_each_sampled():
    records = [{"text": "w" * n} for n in range(1, 101)]
    labels = [v["length"] for v in stratum_values(records, ["length"])]
    assert Counter(labels) == {"1-25 chars": 25, "26-50 chars": 25, "51-75 chars": 25,
                               "76-100 chars": 25}  # fmt: skip
    sample = review_sample(records, 0.2, strata=["length"])
    assert Counter(s.stratum["length"] for s in sample) == {label: 5 for label in set(labels)}


def test_strata_absent_from_every_record_are_ignored():
    records = [{"text": "a" * i} for i in range(1, 41)]
    values = stratum_values(records, ["category", "source", "length"])
    assert set(values[0]) == {"length"}


def test_cross_strata_cover_category_and_source():
    records = _records()
    sample = review_sample(records, 0.1, strata=("category", "source"))
    cells = {(r["category"], r["source"]) for r in records}
    assert {(s.stratum["category"], s.stratum["source"]) for s in sample} == cells


def test_sample_is_deterministic_for_a_seed():
    records = _records()
    first = review_sample(records, 0.1, seed=7)
    assert first == review_sample(records, 0.1, seed=7)
    assert [s.index for s in first] != [s.index for s in review_sample(records, 0.1, seed=8)]
    assert [s.index for s in first] == sorted(s.index for s in first)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(TunesmithError, match="fraction"):
        review_sample(_records(), fraction)


def test_review_lines_carry_origin_and_hashes(tmp_path):
    src = _jsonl(tmp_path / "data.jsonl", _records())
    entries = review_entries(src, 0.1)
    whole = dataset_hash(_records())
    for entry in entries:
        assert entry["decision"] == "" and entry["edited"] is None
        assert entry["record"] == _records()[entry["index"]]
        assert entry["line"] == entry["index"] + 1 and entry["source"] == str(src)
        assert entry["hash"] == dataset_hash([entry["record"]])
        assert entry["dataset_hash"] == whole


# --- applying -----------------------------------------------------------------------------


@pytest.fixture
def reviewed(tmp_path):
    """A source of 100 records, its review file with one decision of each kind, applied."""
    src = _jsonl(tmp_path / "data.jsonl", _records())
    review = tmp_path / "review.jsonl"
    write_review_file(src, review, 0.1, seed=1)
    rows = _rows(review)
    edited = {**rows[1]["record"], "output": "a better answer"}
    _decide(
        review,
        {
            0: {"decision": "accept"},
            1: {"decision": "edit", "edited": edited},
            2: {"decision": "reject", "reason": "wrong answer"},
            3: {"decision": "reject", "reason": "off topic"},
        },
    )
    out = tmp_path / "reviewed.jsonl"
    summary = apply_review(src, review, out)
    return SimpleNamespace(src=src, out=out, rows=rows, edited=edited, summary=summary)


def test_apply_each_decision_kind(reviewed):
    src, out, rows, edited = reviewed.src, reviewed.out, reviewed.rows, reviewed.edited
    kept = _rows(out)
    originals = _records()
    assert rows[0]["record"] in kept  # accepted
    assert edited in kept and rows[1]["record"] not in kept  # the edit replaced its record
    assert rows[2]["record"] not in kept and rows[3]["record"] not in kept
    assert rows[4]["record"] in kept  # undecided: kept as read
    unsampled = {r["index"] for r in rows} ^ set(range(len(originals)))
    assert all(originals[i] in kept for i in unsampled)
    # order kept: the edit sits where its record was (the rejects come after it)
    assert kept.index(edited) == rows[1]["index"]
    rejects = _rows(out.with_name("reviewed.rejects.jsonl"))
    assert [(r["reason"], r["line"], r["step"]) for r in rejects] == [
        ("wrong answer", rows[2]["line"], "review"),
        ("off topic", rows[3]["line"], "review"),
    ]
    assert rejects[0]["record"] == rows[2]["record"] and rejects[0]["source"] == str(src)


def test_counts_balance_and_are_reported(reviewed):
    out, rows, summary = reviewed.out, reviewed.rows, reviewed.summary
    assert summary["read"] == 100 == summary["kept"] + summary["rejected"]
    assert len(_rows(out)) == summary["kept"] == 98
    assert summary["reviewed"] == len(rows)
    assert (summary["accepted"], summary["modified"], summary["rejected"]) == (1, 1, 2)
    assert summary["undecided"] == len(rows) - 4
    assert summary["acceptance_rate"] == 0.25  # 1 accepted of 4 decided


def test_lineage_metadata_names_source_and_review(reviewed):
    out, summary = reviewed.out, reviewed.summary
    meta = read_meta(out)
    assert meta["operation"] == "review"
    assert meta["hash"] == dataset_hash(_rows(out))
    assert [p["path"] for p in meta["parents"]] == ["data.jsonl", "review.jsonl"]
    assert meta["parents"][0]["hash"] == dataset_hash(_records())
    assert meta["metrics"]["modified"] == 1 and meta["metrics"]["rejected"] == 2
    assert [Path(e["path"]).name for e in lineage(out)][-1] == "reviewed.jsonl"
    assert summary["version_path"] == f"{out}.meta.json"


def test_an_edit_identical_to_the_record_counts_as_accepted(tmp_path):
    src = _jsonl(tmp_path / "data.jsonl", _records())
    review = tmp_path / "review.jsonl"
    write_review_file(src, review, 0.1)
    _decide(review, {0: {"decision": "edit", "edited": _rows(review)[0]["record"]}})
    summary = apply_review(src, review, tmp_path / "out.jsonl")
    assert (summary["accepted"], summary["modified"]) == (1, 0)


def test_output_in_another_format_by_suffix(tmp_path):
    src = _jsonl(tmp_path / "data.jsonl", _records())
    review = tmp_path / "review.jsonl"
    write_review_file(src, review, 0.1)
    _decide(review, {0: {"decision": "reject", "reason": "bad"}})
    out = tmp_path / "reviewed.json"
    apply_review(src, review, out)
    assert len(json.loads(out.read_text("utf-8"))) == 99


# --- refusals -----------------------------------------------------------------------------


def _prepared(tmp_path) -> tuple[Path, Path]:
    src = _jsonl(tmp_path / "data.jsonl", _records())
    review = tmp_path / "review.jsonl"
    write_review_file(src, review, 0.1)
    return src, review


def test_a_changed_source_record_is_refused_naming_the_line(tmp_path):
    src, review = _prepared(tmp_path)
    target = _rows(review)[2]
    records = _records()
    records[target["index"]]["output"] = "changed after sampling"
    _jsonl(src, records)
    with pytest.raises(DataError) as err:
        apply_review(src, review, tmp_path / "out.jsonl")
    assert f"{review}:3:" in str(err.value)
    assert f"{src}:{target['line']}" in str(err.value) and "changed since sampling" in str(
        err.value
    )
    assert not (tmp_path / "out.jsonl").exists()


def test_a_source_changed_outside_the_sample_is_refused(tmp_path):
    src, review = _prepared(tmp_path)
    _jsonl(src, [*_records(), {"instruction": "new", "input": "", "output": "appended"}])
    with pytest.raises(DataError, match="changed since the review file was sampled"):
        apply_review(src, review, tmp_path / "out.jsonl")


def test_another_source_is_refused(tmp_path):
    _src, review = _prepared(tmp_path)
    other = _jsonl(tmp_path / "other.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(DataError, match=r"review\.jsonl:1: .*(past the end|changed)"):
        apply_review(other, review, tmp_path / "out.jsonl")


def test_a_record_edited_in_place_in_the_review_file_is_refused(tmp_path):
    src, review = _prepared(tmp_path)
    rows = _rows(review)
    rows[1]["record"]["output"] = "edited in place"
    _jsonl(review, rows)
    with pytest.raises(DataError, match=r"review\.jsonl:2: 'record' was changed since sampling"):
        apply_review(src, review, tmp_path / "out.jsonl")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"decision": "maybe"}, "decision 'maybe' is not one of accept, edit, reject"),
        ({"decision": "reject"}, "decision 'reject' needs a 'reason'"),
        ({"decision": "reject", "reason": "  "}, "decision 'reject' needs a 'reason'"),
        ({"decision": "edit"}, "decision 'edit' needs 'edited'"),
        ({"decision": "edit", "edited": "text"}, "decision 'edit' needs 'edited'"),
        ({"decision": "accept", "edited": {"a": 1}}, "'edited' is given but the decision"),
        ({"decison": "accept"}, "unknown key"),
    ],
)
def test_bad_decisions_are_refused_with_file_and_line(tmp_path, fields, expected):
    src, review = _prepared(tmp_path)
    _decide(review, {3: fields})
    with pytest.raises(DataError) as err:
        apply_review(src, review, tmp_path / "out.jsonl")
    assert str(err.value).startswith(f"{review}:4: ")
    assert expected in str(err.value)
    assert not (tmp_path / "out.jsonl").exists()


def test_a_malformed_review_line_is_refused_with_file_and_line(tmp_path):
    src, review = _prepared(tmp_path)
    lines = review.read_text("utf-8").splitlines()
    lines[1] = lines[1][:-5]  # cut short, as a careless edit would
    review.write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(DataError, match=rf"^{review}:2: "):
        apply_review(src, review, tmp_path / "out.jsonl")


def test_the_same_record_reviewed_twice_is_refused(tmp_path):
    src, review = _prepared(tmp_path)
    rows = _rows(review)
    _jsonl(review, [*rows, rows[0]])
    with pytest.raises(DataError, match=rf"{review}:{len(rows) + 1}: .*reviewed twice"):
        apply_review(src, review, tmp_path / "out.jsonl")


def test_sampling_again_over_decisions_is_refused(tmp_path):
    src, review = _prepared(tmp_path)
    _decide(review, {0: {"decision": "accept"}})
    with pytest.raises(DataError, match="already holds 1 review decisions"):
        write_review_file(src, review, 0.1)


def test_the_output_may_not_overwrite_the_source(tmp_path):
    src, review = _prepared(tmp_path)
    with pytest.raises(DataError, match="overwrite the source"):
        apply_review(src, review, src)


# --- through the CLI ----------------------------------------------------------------------


def test_cli_sample_then_apply(tmp_path):
    src = _jsonl(tmp_path / "data.jsonl", _records())
    review = tmp_path / "review.jsonl"
    result = invoke("data", "review", src, "--sample", "0.1", "--out", review,
                    "--strata", "category", "--seed", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = _rows(review)
    assert Counter(r["stratum"]["category"] for r in rows) == {"math": 6, "code": 3, "chat": 1}
    assert "10 records from 3 strata" in result.stdout

    _decide(review, {0: {"decision": "accept"}, 1: {"decision": "reject", "reason": "dup"}})
    out = tmp_path / "reviewed.jsonl"
    result = invoke("data", "review", src, "--apply", review, "--out", out)
    assert result.exit_code == 0, result.output
    assert "10 reviewed: 1 accepted, 0 modified, 1 rejected, 8 undecided" in result.stdout
    assert "acceptance rate 50%" in result.stdout
    assert "100 read = 99 kept + 1 rejected" in result.stdout
    assert len(_rows(out)) == 99 and read_meta(out)["operation"] == "review"

    log = invoke("data", "log", out)
    assert log.exit_code == 0 and "[review]" in log.stdout


def test_cli_default_sample_is_ten_percent(tmp_path):
    src = _jsonl(tmp_path / "data.jsonl", [{"text": f"t{i}"} for i in range(50)])
    result = invoke("data", "review", src, "--out", tmp_path / "review.jsonl", "--strata", "")
    assert result.exit_code == 0, result.output
    assert len(_rows(tmp_path / "review.jsonl")) == 5


def test_cli_bad_decision_is_one_line_with_file_and_line(tmp_path):
    src = _jsonl(tmp_path / "data.jsonl", _records())
    review = tmp_path / "review.jsonl"
    assert invoke("data", "review", src, "--out", review).exit_code == 0
    _decide(review, {2: {"decision": "reject"}})
    result = invoke("data", "review", src, "--apply", review, "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 2
    assert f"{review}:3: decision 'reject' needs a 'reason'" in result.output


def test_cli_refuses_sample_and_apply_together(tmp_path):
    src = _jsonl(tmp_path / "data.jsonl", _records())
    result = invoke(
        "data", "review", src, "--sample", "0.1", "--apply", src, "--out", tmp_path / "o.jsonl"
    )
    assert result.exit_code == 2 and "not both" in result.output
