"""convert: lossless records in every format, atomic writers, seeded splits and balancing."""

from __future__ import annotations

import copy
import csv
import json
import random
from collections import Counter

import pytest
from conftest import shared_file

from tunesmith.data.convert import (
    balance_records,
    convert_file,
    label_of,
    split_records,
    to_record,
    write_records,
)
from tunesmith.data.formats import FORMATS, load_conversations, to_conversation
from tunesmith.data.readers import RawRecord, read_records
from tunesmith.utils.errors import DataError

TEXTS = ["hi", "  padded  ", "line one\nline two", "你好，世界", 'quotes " and , commas', "{x}"]


def _conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """Canonical conversations: with and without system, one to four user/assistant pairs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        system = [{"role": "system", "content": rng.choice(TEXTS)}] if i % 3 else []
        turns = [
            {"role": role, "content": f"{rng.choice(TEXTS)} {i}.{t}"}
            for t in range(rng.randint(1, 4))
            for role in ("user", "assistant")
        ]
        out.append(system + turns)
    return out


def _read_back(record: dict, fmt: str) -> list[dict]:
    return to_conversation(RawRecord("mem", 1, record), fmt).messages


# --- to_record ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_conversation_round_trips_through_every_format(fmt):
    for messages in _conversations(60):
        assert _read_back(to_record(messages, fmt), fmt) == messages


def test_formats_convert_into_each_other_without_loss():
    for messages in _conversations(30, seed=1):
        via = messages
        for fmt in ("alpaca", "sharegpt", "openai", "alpaca"):
            via = _read_back(to_record(via, fmt), fmt)
        assert via == messages


def test_record_shapes_follow_each_format():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert to_record(messages, "alpaca") == {
        "instruction": "q2",
        "input": "",
        "output": "a2",
        "system": "be brief",
        "history": [["q1", "a1"]],
    }
    assert to_record(messages, "sharegpt") == {
        "conversations": [
            {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "a1"},
            {"from": "human", "value": "q2"},
            {"from": "gpt", "value": "a2"},
        ],
        "system": "be brief",
    }
    assert to_record(messages, "openai") == {"messages": messages}
    assert to_record(messages[3:], "alpaca") == {"instruction": "q2", "input": "", "output": "a2"}


@pytest.mark.parametrize(
    "roles",
    [[], ["system"], ["user"], ["user", "assistant", "user"], ["assistant", "user"]],
)
def test_non_canonical_messages_are_refused(roles):
    messages = [{"role": r, "content": "x"} for r in roles]
    with pytest.raises(ValueError, match="alternating and ending with the assistant"):
        to_record(messages, "alpaca")
    with pytest.raises(ValueError, match="unknown format 'chatml'"):
        to_record([{"role": "user", "content": "q"}], "chatml")


# --- write_records ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_written_files_read_back_as_the_same_conversations(tmp_path, suffix, fmt):
    conversations = _conversations(12, seed=2)
    path = tmp_path / f"out{suffix}"
    assert write_records(path, (to_record(m, fmt) for m in conversations)) == 12
    loaded, stats = load_conversations([path])
    assert stats["formats"][str(path)] == fmt
    assert [c.messages for c in loaded] == conversations


def test_json_output_matches_json_dump_and_keeps_unicode(tmp_path):
    records = [{"a": "你好", "b": [1, {"c": None}]}, {"a": "x\ny"}]
    write_records(tmp_path / "out.json", records)
    text = (tmp_path / "out.json").read_text(encoding="utf-8")
    assert text == json.dumps(records, indent=2, ensure_ascii=False) + "\n"
    write_records(tmp_path / "empty.json", [])
    assert json.loads((tmp_path / "empty.json").read_text()) == []


def test_csv_encodes_nested_values_and_unions_the_columns(tmp_path):
    path = tmp_path / "out.csv"
    write_records(path, [{"a": "1", "history": [["q", "a"]]}, {"b": 2, "a": None}])
    with path.open(encoding="utf-8", newline="") as f:
        assert list(csv.reader(f)) == [
            ["a", "history", "b"],
            ["1", '[["q", "a"]]', ""],
            ["", "", "2"],
        ]
    assert [r.data["history"] for r in read_records(path)] == [[["q", "a"]], ""]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_files(tmp_path):
    path = tmp_path / "out.jsonl"
    write_records(path, [{"v": 1}])

    def failing():
        yield {"v": 2}
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write_records(path, failing())
    assert path.read_text() == '{"v": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_writer_errors_name_the_file_and_record(tmp_path):
    with pytest.raises(DataError, match=r"out\.txt: unsupported output type '\.txt'"):
        write_records(tmp_path / "out.txt", [{}])
    with pytest.raises(DataError, match=r"out\.jsonl: record 2: cannot be written as JSON"):
        write_records(tmp_path / "out.jsonl", [{"ok": 1}, {"bad": {1, 2}}])
    with pytest.raises(DataError, match=r"out\.csv: record 1: expected an object, got list"):
        write_records(tmp_path / "out.csv", [[1, 2]])
    with pytest.raises(DataError, match=r"out\.parquet: column 'label'"):
        write_records(tmp_path / "out.parquet", [{"label": 1}, {"label": [1]}])
    assert not list(tmp_path.iterdir())


def test_parent_folders_are_created(tmp_path):
    assert write_records(tmp_path / "a" / "b" / "out.jsonl", [{"x": 1}]) == 1


# --- convert_file -------------------------------------------------------------------------


def test_convert_file_counts_and_rejects_with_the_line(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"instruction": "q", "output": "a"}, {"instruction": "q", "output": ""}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rejected = []
    stats = convert_file(
        src,
        tmp_path / "out.json",
        "openai",
        on_error="skip",
        reject=lambda r, why: rejected.append((r.line, why)),
    )
    assert stats == {
        "read": 2,
        "kept": 1,
        "rejected": 1,
        "written": 1,
        "from": "alpaca",
        "to": "openai",
    }
    assert rejected == [(2, "field 'output' is missing or empty")]
    assert json.loads((tmp_path / "out.json").read_text()) == [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    ]
    with pytest.raises(DataError, match=r"in\.jsonl:2: field 'output'"):
        convert_file(src, tmp_path / "stop.json", "openai")
    assert not (tmp_path / "stop.json").exists()
    with pytest.raises(ValueError, match="unknown target format 'xml'"):
        convert_file(src, tmp_path / "x.json", "xml")


def test_convert_file_renames_columns_on_the_way(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("question,answer\nWhy?,Because.\n", encoding="utf-8")
    convert_file(
        src,
        tmp_path / "out.jsonl",
        "sharegpt",
        columns={"instruction": "question", "output": "answer"},
    )
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {
        "conversations": [{"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because."}]
    }


def test_llamafactory_identity_converts_back_to_the_identical_file(tmp_path):
    src = shared_file("identity.json")
    convert_file(src, tmp_path / "identity.sharegpt.parquet", "sharegpt")
    stats = convert_file(
        tmp_path / "identity.sharegpt.parquet", tmp_path / "identity.json", "alpaca"
    )
    assert stats["read"] == stats["written"] == 91
    assert (tmp_path / "identity.json").read_text(encoding="utf-8") == src.read_text(
        encoding="utf-8"
    )


def test_llamafactory_alpaca_demo_survives_every_format(tmp_path):
    src = shared_file("alpaca_en_demo.json")
    original, _ = load_conversations([src])
    path = src
    for i, fmt in enumerate(("sharegpt", "openai", "alpaca")):
        dst = tmp_path / f"step{i}.{['jsonl', 'csv', 'json'][i]}"
        convert_file(path, dst, fmt)
        path = dst
    converted, stats = load_conversations([path])
    assert stats["read"] == 999
    assert [c.messages for c in converted] == [c.messages for c in original]


# --- label_of -----------------------------------------------------------------------------


def test_label_of_accepts_strings_and_integers_and_names_the_record():
    assert [label_of({"label": v}) for v in ("pos", 3, True)] == ["pos", 3, True]
    assert label_of(RawRecord("d.jsonl", 4, {"label": "neg"})) == "neg"
    with pytest.raises(DataError, match=r"^d\.jsonl:4: record has no 'label' field"):
        label_of(RawRecord("d.jsonl", 4, {"text": "x"}))
    with pytest.raises(DataError, match="must be a string or an integer, got float"):
        label_of({"label": 0.5})
    with pytest.raises(DataError, match="'label' is empty"):
        label_of({"label": "  "})


# --- split_records ------------------------------------------------------------------------


def test_split_is_complete_disjoint_sized_by_largest_remainder_and_seeded():
    records = [{"id": i} for i in range(10)]
    parts = split_records(records, (0.5, 0.25, 0.25), seed=1)
    assert [len(p) for p in parts] == [5, 3, 2]  # 2.5 and 2.5: the tie goes to the earlier part
    ids = [r["id"] for p in parts for r in p]
    assert sorted(ids) == list(range(10))
    assert all(p == sorted(p, key=lambda r: r["id"]) for p in parts)  # input order kept
    assert split_records(records, (0.5, 0.25, 0.25), seed=1) == parts
    assert split_records(records, (0.5, 0.25, 0.25), seed=2) != parts
    assert [len(p) for p in split_records(list(range(100)), (0.71, 0.29))] == [71, 29]


def test_stratified_split_keeps_label_proportions_in_every_part():
    records = [{"id": i, "label": "a" if i % 10 < 7 else "b"} for i in range(100)]
    parts = split_records(records, (0.8, 0.1, 0.1), seed=3, stratify_key=label_of)
    counts = [Counter(r["label"] for r in p) for p in parts]
    assert counts == [Counter(a=56, b=24), Counter(a=7, b=3), Counter(a=7, b=3)]
    plain = split_records(records, (0.8, 0.1, 0.1), seed=3)
    assert sorted(r["id"] for p in plain for r in p) == list(range(100))


def test_split_with_classes_too_small_for_every_part_still_places_every_record():
    records = [{"label": c} for c in "aabcdde"]
    parts = split_records(records, (0.6, 0.2, 0.2), stratify_key=label_of)
    assert sum(len(p) for p in parts) == 7
    assert sorted(r["label"] for p in parts for r in p) == sorted("aabcdde")


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ((0.8, 0.1), r"ratios must sum to 1, got 0\.8 \+ 0\.1 = 0\.9"),
        ((), "one or more non-negative numbers"),
        ((1.2, -0.2), "one or more non-negative numbers"),
    ],
)
def test_bad_ratios_are_refused(ratios, message):
    with pytest.raises(ValueError, match=message):
        split_records([1, 2, 3], ratios)


# --- balance_records ----------------------------------------------------------------------


def _ids(records: list[dict]) -> tuple[int, ...]:
    return tuple(r["id"] for r in records)


def _labelled() -> list[dict]:
    return [{"id": i, "label": lab} for i, lab in enumerate("aaaaaabbbc")]


def test_oversampling_raises_every_class_to_the_largest_and_keeps_the_originals():
    records = _labelled()
    before = copy.deepcopy(records)
    balanced = balance_records(records, label_of, "oversample", seed=5)
    assert records == before
    assert Counter(r["label"] for r in balanced) == Counter(a=6, b=6, c=6)
    assert balanced[:10] == records
    assert all(r["label"] == "b" for r in balanced[10:13])  # duplicates of each class in turn
    assert balance_records(records, label_of, "oversample", seed=5) == balanced  # seeded
    draws = {_ids(balance_records(records, label_of, "oversample", seed=s)[10:]) for s in range(6)}
    assert len(draws) > 1  # the seed picks which records are duplicated
    balanced[-1]["label"] = "changed"
    assert records[9]["label"] == "c"  # duplicates are copies
    eight = balance_records(records, label_of, "oversample", target=8)
    assert Counter(r["label"] for r in eight) == Counter(a=8, b=8, c=8)


def test_undersampling_lowers_every_class_to_the_smallest_in_input_order():
    records = _labelled()
    balanced = balance_records(records, label_of, "undersample", seed=5)
    assert Counter(r["label"] for r in balanced) == Counter(a=1, b=1, c=1)
    assert [r["id"] for r in balanced] == sorted(r["id"] for r in balanced)
    two = balance_records(records, label_of, "undersample", target=2)
    assert Counter(r["label"] for r in two) == Counter(a=2, b=2, c=1)
    assert balance_records(records, label_of, "undersample", seed=5) == balanced
    draws = {_ids(balance_records(records, label_of, "undersample", seed=s)) for s in range(6)}
    assert len(draws) > 1


def test_balance_refuses_unknown_strategies_and_handles_no_records():
    with pytest.raises(
        ValueError, match="unknown strategy 'smote'; allowed: oversample, undersample"
    ):
        balance_records(_labelled(), label_of, "smote")
    with pytest.raises(ValueError, match="target must be at least 1"):
        balance_records(_labelled(), label_of, target=0)
    assert balance_records([], label_of) == []
