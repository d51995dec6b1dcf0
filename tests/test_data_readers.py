"""Readers: every file type yields dict records with the line where each record starts."""

import json
import re
from pathlib import Path

import pytest

from tunesmith.data.readers import RawRecord, read_records
from tunesmith.utils.errors import DataError


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _read(path: str) -> list[RawRecord]:
    return list(read_records(path))


def test_json_array_reports_line_of_each_opening_brace(tmp_path):
    text = '[\n  {\n    "a": 1,\n    "b": "x\\ny"\n  },\n\n  {"a": 2},\n  {\n "a": 3}\n]\n'
    path = _write(tmp_path / "d.json", text)
    records = _read(path)
    assert [r.data["a"] for r in records] == [1, 2, 3]
    assert [r.line for r in records] == [2, 7, 8]
    assert records[0].where == f"{path}:2"
    assert records[0].source == path


def test_json_array_lines_match_pretty_printed_dump(tmp_path):
    items = [{"i": i, "text": "line\n" * (i % 3)} for i in range(50)]
    text = json.dumps(items, indent=2)
    path = _write(tmp_path / "d.json", text)
    lines = text.splitlines()
    records = _read(path)
    assert len(records) == 50
    for record in records:
        assert lines[record.line - 1].strip() == "{"
        assert lines[record.line].strip() == f'"i": {record.data["i"]},'  # its first key


def test_json_misnamed_jsonl_is_read_line_by_line(tmp_path):
    path = _write(tmp_path / "d.json", '{"a": 1}\n\n{"a": 2}\n')
    assert [(r.line, r.data) for r in _read(path)] == [(1, {"a": 1}), (3, {"a": 2})]


def test_empty_json_array_and_empty_file(tmp_path):
    assert _read(_write(tmp_path / "a.json", " [ ] \n")) == []
    assert _read(_write(tmp_path / "b.json", "")) == []


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ('[\n {"a": 1},\n {"a": }\n]', 3, "invalid JSON"),
        ('[\n {"a": 1},\n [1, 2]\n]', 3, "expected a JSON object, got list"),
        ('[\n {"a": 1},\n]', 3, "trailing comma"),
        ('[\n {"a": 1}\n {"a": 2}\n]', 3, "expected ',' or ']'"),
        ('[\n {"a": 1},\n {"a": 2}\n', 4, "unterminated array"),
        ('[{"a": 1}]\n]', 2, "extra data"),
        ('"just a string"', 1, "expected a JSON object, got str"),
    ],
)
def test_json_errors_name_file_and_line(tmp_path, text, line, reason):
    path = _write(tmp_path / "bad.json", text)
    with pytest.raises(DataError) as err:
        _read(path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert reason in str(err.value)


def test_jsonl_skips_blank_lines_and_keeps_real_line_numbers(tmp_path):
    path = _write(tmp_path / "d.jsonl", '\n{"a": 1}\n   \n\n{"a": 2}\n\n')
    assert [(r.line, r.data) for r in _read(path)] == [(2, {"a": 1}), (5, {"a": 2})]


def test_jsonl_errors(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"a": 1}\n{"a": 1,}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        _read(path)
    path = _write(tmp_path / "e.jsonl", '{"a": 1}\n\n[1]\n')
    with pytest.raises(DataError, match=r"e\.jsonl:3: expected a JSON object, got list"):
        _read(path)


def test_invalid_utf8_is_a_data_error_with_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid UTF-8"):
        _read(str(path))
    path = tmp_path / "d.json"
    path.write_bytes(b'[\n{"a": 1},\n{"a": "\xff"}\n]')
    with pytest.raises(DataError, match=r"d\.json:3: not valid UTF-8"):
        _read(str(path))


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'\xef\xbb\xbf[{"a": "\xe4\xbd\xa0\xe5\xa5\xbd"}]')
    assert _read(str(path))[0].data == {"a": "你好"}


def test_csv_multiline_cells_report_start_line_and_decode_json_columns(tmp_path):
    text = (
        "instruction,input,output,history\n"
        '"first\nsecond line",,out1,\n'
        'q2,in2,"multi\n\nline",' + '"[[""hi"", ""hello""]]"\n'
        "\n"
        "q3,,out3,\n"
    )
    path = _write(tmp_path / "d.csv", text)
    records = _read(path)
    assert [r.line for r in records] == [2, 4, 8]
    assert records[0].data == {
        "instruction": "first\nsecond line",
        "input": "",
        "output": "out1",
        "history": "",
    }
    assert records[1].data["history"] == [["hi", "hello"]]
    assert records[1].data["output"] == "multi\n\nline"


def test_csv_values_stay_strings(tmp_path):
    path = _write(tmp_path / "d.csv", "instruction,output\n1,[not json]\n")
    assert _read(path)[0].data == {"instruction": "1", "output": "[not json]"}


def test_csv_errors(tmp_path):
    path = _write(tmp_path / "d.csv", 'conversations\n"[{""from"": ""human""}]"\n"[broken"\n')
    with pytest.raises(DataError, match=r"d\.csv:3: column 'conversations' is not valid JSON"):
        _read(path)
    path = _write(tmp_path / "e.csv", "a,b\n1,2\n1,2,3\n")
    with pytest.raises(DataError, match=r"e\.csv:3: row has 3 cells, header has 2"):
        _read(path)
    with pytest.raises(DataError, match=r"f\.csv:1: empty CSV file; a header row is required"):
        _read(_write(tmp_path / "f.csv", ""))


def test_parquet_rows_and_where(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "instruction": [f"q{i}" for i in range(5)],
            "conversations": [[{"from": "human", "value": f"v{i}"}] for i in range(5)],
        }
    )
    path = str(tmp_path / "d.parquet")
    pq.write_table(table, path, row_group_size=2)  # several row groups: streaming path
    records = _read(path)
    assert [r.line for r in records] == [1, 2, 3, 4, 5]
    assert records[3].data == {
        "instruction": "q3",
        "conversations": [{"from": "human", "value": "v3"}],
    }
    assert records[3].where == f"{path}:row 4"


def test_corrupt_parquet_is_a_data_error(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"d\.parquet: not a readable parquet file"):
        _read(str(path))


def test_missing_file_and_unsupported_extension(tmp_path):
    with pytest.raises(DataError) as err:
        read_records(tmp_path / "nope.jsonl")
    assert str(err.value) == f"{tmp_path / 'nope.jsonl'}: no such file"
    path = _write(tmp_path / "d.xml", "<hello/>")
    with pytest.raises(DataError) as err:
        read_records(path)
    message = str(err.value)
    assert message.startswith(f"{path}: unsupported file type '.xml'")
    for suffix in (".json", ".jsonl", ".csv", ".parquet", ".txt"):
        assert suffix in message


def test_large_json_array_line_numbers(tmp_path):
    # Line numbers stay exact deep into a large file (the reader counts newlines incrementally).
    items = [{"instruction": f"q{i}", "output": "a\nb"} for i in range(100_000)]
    path = _write(tmp_path / "big.json", json.dumps(items, indent=1))
    records = _read(path)
    assert len(records) == 100_000
    assert records[-1].line == 2 + 4 * 99_999  # '[' then 4 lines per element


def test_txt_one_document_per_line_with_exact_line_numbers(tmp_path):
    # Blank and whitespace-only lines separate documents; \u2028 and \x0c are not line breaks.
    text = "\ufefffirst doc\n\n   \nsecond\u2028still second\r\n\tthird \x0c end\n\n"
    path = _write(tmp_path / "d.txt", text)
    records = _read(path)
    assert [(r.line, r.data) for r in records] == [
        (1, {"text": "first doc"}),
        (4, {"text": "second\u2028still second"}),
        (5, {"text": "\tthird \x0c end"}),
    ]
    assert records[1].where == f"{path}:4"


def test_txt_bad_utf8_names_its_line(tmp_path):
    path = tmp_path / "d.txt"
    path.write_bytes(b"fine\n\nalso fine\nbad \xff byte\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:4: not valid UTF-8"):
        _read(str(path))


def test_empty_txt_has_no_records(tmp_path):
    assert _read(_write(tmp_path / "d.txt", "\n \n")) == []
