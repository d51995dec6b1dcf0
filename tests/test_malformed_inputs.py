"""A corpus of malformed inputs through `data inspect`, `data clean` and `train`.

Every input is generated here. Each one goes through the three commands as a user runs them
(the CLI, through typer's runner); `train` runs with `data.on_error=skip` up to the trainer (the
model load is replaced by the tiny tokenizer and the run stops once the examples are built: the
data path is the one `tunesmith train` takes). What every case must show:

- no traceback: the command succeeds, or exits 2 with one `error:` sentence;
- counts balance: inspect's read == valid + malformed, clean's read == kept + rejected (every
  rejection in rejects.jsonl with its file, line and reason), train's read == examples +
  rejected (+ beyond max_samples), with one line in the run's rejects.jsonl per rejection;
- where a case names the reason of its bad record, that reason is the one given, at its line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli.main import app

runner = CliRunner()

GOOD = {"instruction": "What is two plus two?", "output": "Two plus two makes four in total."}
GOOD2 = {"instruction": "Name a primary colour.", "output": "Red is one of the primary colours."}
SHARE = {
    "conversations": [
        {"from": "human", "value": "What is the capital of France?"},
        {"from": "gpt", "value": "The capital of France is Paris."},
    ]
}
OPENAI = {
    "messages": [
        {"role": "user", "content": "What is the capital of Italy?"},
        {"role": "assistant", "content": "The capital of Italy is Rome."},
    ]
}


def j(record: object) -> str:
    return json.dumps(record, ensure_ascii=False)


def lines(*rows: str, end: str = "\n") -> bytes:
    return "".join(row + end for row in rows).encode("utf-8")


def around(bad: str | bytes) -> bytes:
    """A good record, the bad line (line 2), a good record."""
    bad = bad if isinstance(bad, bytes) else bad.encode("utf-8")
    return j(GOOD).encode() + b"\n" + bad + b"\n" + j(GOOD2).encode() + b"\n"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def csv_rows(*rows: str) -> bytes:
    return ("instruction,output\n" + "".join(r + "\n" for r in rows)).encode("utf-8")


CSV_GOOD = f"{csv_cell(GOOD['instruction'])},{csv_cell(GOOD['output'])}"


def parquet_bytes(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


@dataclass
class Case:
    name: str
    file: str  # file name (its suffix picks the reader)
    content: bytes | None  # None: see `make`
    reason: str | None = None  # the reason every command gives for line `line`, if readable
    line: int = 2
    # commands where one sentence for the whole file is expected (exit 2); inspect reports a
    # file it cannot finish ("stopped") rather than stopping, so it is never named here
    file_error: tuple[str, ...] = ()
    fmt: str = "auto"
    make: str = ""  # special setups: "dir", "missing", "unreadable"
    extra: dict = field(default_factory=dict)


FILE = ("clean", "train")
DEEP = 100_000  # past the JSON parser's recursion limit
CASES = [
    # --- JSON lines: syntax
    Case(
        "jsonl-truncated-object",
        "d.jsonl",
        around('{"instruction": "x", "output": '),
        "invalid JSON",
    ),
    Case(
        "jsonl-trailing-comma",
        "d.jsonl",
        around('{"instruction": "x", "output": "y",}'),
        "invalid JSON",
    ),
    Case(
        "jsonl-single-quotes",
        "d.jsonl",
        around("{'instruction': 'x', 'output': 'y'}"),
        "invalid JSON",
    ),
    Case("jsonl-two-objects-one-line", "d.jsonl", around(j(GOOD) + j(GOOD2)), "invalid JSON"),
    Case("jsonl-unquoted-key", "d.jsonl", around('{instruction: "x"}'), "invalid JSON"),
    Case("jsonl-binary-junk", "d.jsonl", around(bytes(range(128, 256)) * 2), "not valid UTF-8"),
    Case(
        "jsonl-raw-nul-byte",
        "d.jsonl",
        around(b'{"instruction": "a\x00b", "output": "c"}'),
        "invalid JSON",
    ),
    Case(
        "jsonl-pretty-printed",
        "d.jsonl",
        (json.dumps([GOOD, GOOD2], indent=2) + "\n").encode(),
        None,
    ),
    # --- JSON lines: not an object
    Case("jsonl-list", "d.jsonl", around("[1, 2, 3]"), "expected a JSON object, got list"),
    Case("jsonl-string", "d.jsonl", around('"just text"'), "expected a JSON object, got str"),
    Case("jsonl-number", "d.jsonl", around("42"), "expected a JSON object, got int"),
    Case("jsonl-null", "d.jsonl", around("null"), "expected a JSON object, got NoneType"),
    # --- JSON lines: wrong types and missing fields
    Case(
        "alpaca-missing-output",
        "d.jsonl",
        around(j({"instruction": "Only a question?"})),
        "field 'output' is missing or empty",
    ),
    Case(
        "alpaca-missing-instruction",
        "d.jsonl",
        around(j({"output": "An answer alone."})),
        "field 'instruction' is missing or empty",
    ),
    Case(
        "alpaca-empty-instruction",
        "d.jsonl",
        around(j({**GOOD, "instruction": "  "})),
        "field 'instruction' is missing or empty",
    ),
    Case(
        "alpaca-instruction-int",
        "d.jsonl",
        around(j({**GOOD, "instruction": 5})),
        "field 'instruction' must be a string, got int",
    ),
    Case(
        "alpaca-output-list",
        "d.jsonl",
        around(j({**GOOD, "output": ["a", "b"]})),
        "field 'output' must be a string, got list",
    ),
    Case(
        "alpaca-output-object",
        "d.jsonl",
        around(j({**GOOD, "output": {"a": 1}})),
        "field 'output' must be a string, got dict",
    ),
    Case(
        "alpaca-output-nan",
        "d.jsonl",
        around('{"instruction": "x y z", "output": NaN}'),
        "field 'output' must be a string, got float",
    ),
    Case(
        "alpaca-history-not-list",
        "d.jsonl",
        around(j({**GOOD, "history": 3})),
        "field 'history' must be a list, got int",
    ),
    Case(
        "alpaca-history-bad-pair",
        "d.jsonl",
        around(j({**GOOD, "history": [["only one"]]})),
        "history item 1",
    ),
    Case(
        "sharegpt-unknown-role",
        "d.jsonl",
        j(SHARE).encode()
        + b"\n"
        + j(
            {"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]}
        ).encode()
        + b"\n",
        "unsupported role 'robot'",
    ),
    Case(
        "sharegpt-turn-not-object",
        "d.jsonl",
        j(SHARE).encode() + b"\n" + j({"conversations": ["hello", "there"]}).encode() + b"\n",
        "turn 1: expected an object",
    ),
    Case(
        "sharegpt-ends-with-user",
        "d.jsonl",
        j(SHARE).encode()
        + b"\n"
        + j({"conversations": SHARE["conversations"][:1]}).encode()
        + b"\n",
        "conversation ends with a user turn",
    ),
    Case(
        "sharegpt-conversations-bad-string",
        "d.jsonl",
        j(SHARE).encode() + b"\n" + j({"conversations": "[{not json"}).encode() + b"\n",
        "is a string but not valid JSON",
    ),
    Case(
        "openai-multimodal-content",
        "d.jsonl",
        j(OPENAI).encode()
        + b"\n"
        + j(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        ).encode()
        + b"\n",
        "multimodal content is not supported",
    ),
    Case(
        "openai-tool-role",
        "d.jsonl",
        j(OPENAI).encode()
        + b"\n"
        + j(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]}
        ).encode()
        + b"\n",
        "a tool result must follow the assistant's call",
    ),
    Case(
        "openai-missing-content",
        "d.jsonl",
        j(OPENAI).encode()
        + b"\n"
        + j({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}).encode()
        + b"\n",
        "expected an object with 'role' and 'content'",
    ),
    Case(
        "openai-system-not-first",
        "d.jsonl",
        j(OPENAI).encode()
        + b"\n"
        + j({"messages": [*OPENAI["messages"], {"role": "system", "content": "late"}]}).encode()
        + b"\n",
        "a system message is only allowed as the first turn",
    ),
    Case(
        "first-record-unknown-shape",
        "d.jsonl",
        lines(j({"prompt": "x", "answer": "y"}), j(GOOD)),
        None,
        file_error=("train",),
    ),
    # --- empty and blank files
    Case("jsonl-empty-file", "d.jsonl", b"", None),
    Case("jsonl-only-blank-lines", "d.jsonl", b"\n  \n\t\n\r\n", None),
    Case("json-empty-file", "d.json", b"", None),
    Case("json-empty-array", "d.json", b"[ ]\n", None),
    # --- encodings and line endings
    Case("jsonl-bom-first-line", "d.jsonl", b"\xef\xbb\xbf" + lines(j(GOOD), j(GOOD2)), None),
    Case(
        "jsonl-bom-every-line",
        "d.jsonl",
        b"".join(b"\xef\xbb\xbf" + j(r).encode() + b"\n" for r in (GOOD, GOOD2)),
        None,
    ),
    Case("jsonl-crlf", "d.jsonl", lines(j(GOOD), j(GOOD2), end="\r\n"), None),
    Case("jsonl-cr-only", "d.jsonl", lines(j(GOOD), j(GOOD2), end="\r"), None),
    Case("jsonl-utf16", "d.jsonl", lines(j(GOOD)).decode().encode("utf-16"), None, file_error=FILE),
    Case(
        "jsonl-latin1-line",
        "d.jsonl",
        around(j({**GOOD, "output": "café au lait"}).encode("latin-1")),
        "not valid UTF-8",
    ),
    Case(
        "jsonl-mixed-utf8-gbk",
        "d.jsonl",
        around(j({**GOOD, "output": "你好世界"}).encode("gbk")),
        "not valid UTF-8",
    ),
    Case("jsonl-nbsp-indent", "d.jsonl", around("\u00a0" + j(GOOD)), "invalid JSON"),
    # --- sizes: huge lines, deep nesting, huge integers
    Case("jsonl-huge-line", "d.jsonl", around(j({**GOOD, "output": "long text " * 30_000})), None),
    Case("jsonl-deep-nesting-line", "d.jsonl", around(nested(DEEP)), "nested too deeply"),
    Case(
        "jsonl-deep-nesting-field",
        "d.jsonl",
        around('{"instruction": ' + nested(DEEP) + ', "output": "x"}'),
        "nested too deeply",
    ),
    Case(
        "jsonl-nesting-over-max-depth",
        "d.jsonl",
        around('{"instruction": "x", "output": "y", "meta": ' + nested(500) + "}"),
        "nested more than 100 levels",
    ),
    Case(
        "jsonl-huge-int-field",
        "d.jsonl",
        around('{"instruction": "x", "output": ' + "9" * 5000 + "}"),
        "more than 4300 digits",
    ),
    Case("jsonl-huge-int-line", "d.jsonl", around("1" * 5000), "more than 4300 digits"),
    Case(
        "jsonl-huge-negative-int",
        "d.jsonl",
        around('{"instruction": "x", "meta": -' + "7" * 6000 + "}"),
        "more than 4300 digits",
    ),
    # --- surrogates and NUL
    Case(
        "jsonl-lone-high-surrogate",
        "d.jsonl",
        around('{"instruction": "bad \\ud800 here", "output": "some answer text"}'),
        "lone UTF-16 surrogate (\\ud800)",
    ),
    Case(
        "jsonl-lone-low-surrogate",
        "d.jsonl",
        around('{"instruction": "question?", "output": "end \\uDC00"}'),
        "lone UTF-16 surrogate (\\udc00)",
    ),
    Case(
        "jsonl-surrogate-in-key",
        "d.jsonl",
        around('{"instruction": "q", "output": "a", "\\ud83d": 1}'),
        "lone UTF-16 surrogate",
    ),
    Case(
        "jsonl-surrogate-pair-ok",
        "d.jsonl",
        around('{"instruction": "emoji \\ud83d\\ude00 please", "output": "Here it is: ok."}'),
        None,
    ),
    Case(
        "jsonl-escaped-nul",
        "d.jsonl",
        around('{"instruction": "What is NUL?", "output": "It is \\u0000 a zero byte."}'),
        None,
    ),
    # --- JSON arrays
    Case(
        "json-array-non-object-element",
        "d.json",
        f"[\n{j(GOOD)},\n[1, 2],\n{j(GOOD2)}\n]\n".encode(),
        "expected a JSON object, got list",
        line=3,
    ),
    Case(
        "json-array-syntax-error",
        "d.json",
        f"[\n{j(GOOD)},\n{{oops}},\n{j(GOOD2)}\n]".encode(),
        None,
        file_error=FILE,
    ),
    Case(
        "json-array-trailing-comma", "d.json", f"[\n{j(GOOD)},\n]".encode(), None, file_error=FILE
    ),
    Case(
        "json-array-unterminated",
        "d.json",
        f"[\n{j(GOOD)},\n{j(GOOD2)}\n".encode(),
        None,
        file_error=FILE,
    ),
    Case(
        "json-top-level-string",
        "d.json",
        b'"hello"',
        "expected a JSON object, got str",
        line=1,
        file_error=("train",),
    ),
    Case(
        "json-array-deep-element",
        "d.json",
        f"[\n{j(GOOD)},\n{nested(DEEP)}\n]".encode(),
        None,
        file_error=FILE,
    ),
    Case(
        "json-array-huge-int-element",
        "d.json",
        f"[\n{j(GOOD)},\n{'3' * 5000}\n]".encode(),
        None,
        file_error=FILE,
    ),
    Case(
        "json-array-surrogate-element",
        "d.json",
        f'[\n{j(GOOD)},\n{{"instruction": "\\ud800", "output": "x"}},\n{j(GOOD2)}\n]'.encode(),
        "lone UTF-16 surrogate",
        line=3,
    ),
    Case("json-bom", "d.json", b"\xef\xbb\xbf" + json.dumps([GOOD, GOOD2]).encode(), None),
    Case("json-misnamed-jsonl", "d.json", lines(j(GOOD), j(GOOD2)), None),
    # --- CSV
    Case(
        "csv-wrong-cell-count",
        "d.csv",
        csv_rows(CSV_GOOD, "a,b,c", CSV_GOOD),
        "row has 3 cells, header has 2",
        line=3,
    ),
    Case("csv-unclosed-quote", "d.csv", csv_rows(CSV_GOOD, '"never closed,x'), None),
    Case("csv-quote-inside-field", "d.csv", csv_rows(CSV_GOOD, 'a "quoted" word,an answer'), None),
    Case("csv-header-only", "d.csv", b"instruction,output\n", None),
    Case("csv-empty", "d.csv", b"", None, file_error=FILE),
    Case(
        "csv-nul-byte",
        "d.csv",
        csv_rows(CSV_GOOD, '"What is\x00 this?","A NUL byte, hidden."'),
        None,
    ),
    Case(
        "csv-huge-field", "d.csv", csv_rows(CSV_GOOD, f"question,{csv_cell('x' * 300_000)}"), None
    ),
    Case(
        "csv-latin1-row",
        "d.csv",
        csv_rows(CSV_GOOD) + "café,crème brûlée\n".encode("latin-1") + CSV_GOOD.encode(),
        "not valid UTF-8",
        line=3,
    ),
    Case(
        "csv-cr-line-ends",
        "d.csv",
        csv_rows(CSV_GOOD, CSV_GOOD).replace(b"\n", b"\r"),
        None,
        file_error=FILE,
    ),
    Case(
        "csv-bad-json-column",
        "d.csv",
        b"conversations\n" + csv_cell(j(SHARE["conversations"])).encode() + b"\n" + b'"[{broken"\n',
        "column 'conversations' is not valid JSON",
        line=3,
    ),
    Case(
        "csv-surrogate-json-column",
        "d.csv",
        b"conversations\n"
        + csv_cell(j(SHARE["conversations"])).encode()
        + b"\n"
        + csv_cell('[{"from": "human", "value": "\\ud800"}]').encode()
        + b"\n",
        "lone UTF-16 surrogate",
        line=3,
    ),
    Case("csv-unknown-columns", "d.csv", b"question,answer\nwhat?,that.\n", None, file_error=FILE),
    Case("csv-crlf", "d.csv", csv_rows(CSV_GOOD, CSV_GOOD).replace(b"\n", b"\r\n"), None),
    Case("csv-bom", "d.csv", b"\xef\xbb\xbf" + csv_rows(CSV_GOOD), None),
    # --- parquet
    Case("parquet-junk", "d.parquet", b"this is not parquet at all" * 10, None, file_error=FILE),
    Case("parquet-truncated", "d.parquet", None, None, file_error=FILE, make="truncated"),
    Case("parquet-jsonl-inside", "d.parquet", lines(j(GOOD)), None, file_error=FILE),
    Case(
        "parquet-wrong-types",
        "d.parquet",
        parquet_bytes([{"instruction": 1, "output": 2}, {"instruction": 3, "output": 4}]),
        "field 'instruction' must be a string",
        line=1,
        file_error=(),
    ),
    # --- wrong format for the declared format, wrong file types, unreadable files
    Case(
        "declared-sharegpt-is-alpaca",
        "d.jsonl",
        lines(j(GOOD), j(GOOD2)),
        "field 'conversations' is missing or empty",
        line=1,
        fmt="sharegpt",
    ),
    Case(
        "declared-openai-is-sharegpt",
        "d.jsonl",
        lines(j(SHARE)),
        "field 'messages' is missing or empty",
        line=1,
        fmt="openai",
    ),
    Case("txt-for-chat-training", "d.txt", b"just some text\nmore text\n", None),
    Case("unsupported-suffix", "d.xml", b"<data/>", None, file_error=FILE),
    Case("no-suffix", "data", lines(j(GOOD)), None, file_error=FILE),
    Case("directory-not-file", "d.jsonl", None, None, file_error=FILE, make="dir"),
    Case("missing-file", "d.jsonl", None, None, file_error=FILE, make="missing"),
    Case("unreadable-file", "d.jsonl", lines(j(GOOD)), None, file_error=FILE, make="unreadable"),
]
COMMANDS = ("inspect", "clean", "train")


def test_corpus_size():
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)


def _write(case: Case, folder: Path, monkeypatch) -> Path:
    path = folder / case.file
    if case.make == "dir":
        path.mkdir()
    elif case.make == "missing":
        pass
    elif case.make == "truncated":
        path.write_bytes(parquet_bytes([GOOD, GOOD2] * 20)[:-40])
    else:
        path.write_bytes(case.content)
    if case.make == "unreadable":
        path.chmod(0)
        if os.access(path, os.R_OK):  # root reads anyway: refuse the read as the OS would
            real_open = Path.open

            def refusing_open(self, *args, **kwargs):
                if Path(self) == path:
                    raise PermissionError(13, "Permission denied", str(path))
                return real_open(self, *args, **kwargs)

            monkeypatch.setattr(Path, "open", refusing_open)
    return path


class _DataBuilt(Exception):
    """Raised where training would start: the examples are built."""


def _one_line_error(result, path: Path) -> str:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _no_traceback(result) -> None:
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit | _DataBuilt), repr(exc)
    assert "Traceback" not in result.output


def _check_reason(case: Case, path: Path, found: list[tuple[str, str]]) -> None:
    """found: (where, reason) of every rejection; the case's reason is there, at its line."""
    if case.reason is None:
        return
    where = f"{path}:row {case.line}" if case.file.endswith(".parquet") else f"{path}:{case.line}"
    reasons = [reason for at, reason in found if at == where]
    assert any(case.reason in r for r in reasons), (where, found)


@pytest.fixture
def train_stops_after_data(monkeypatch, tiny_tokenizer):
    """`tunesmith train` without loading the model, stopping where the trainer would start."""
    from tunesmith.train import recipe

    built: dict = {}

    def tokenizer_only(job, quantization):
        return recipe.Loaded(None, tiny_tokenizer, "tiny")

    real_require = recipe.require_examples

    def stop(data, run):
        real_require(data, run)  # no example left: its own sentence
        built.update(stats=data.stats, run=run)
        raise _DataBuilt

    monkeypatch.setattr(recipe, "load_causal_lm", tokenizer_only)
    monkeypatch.setattr(recipe, "require_examples", stop)
    return built


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input(case, command, tmp_path, monkeypatch, request):
    path = _write(case, tmp_path, monkeypatch)
    if command == "inspect":
        # the HTML page's plots cost a third of a second and are tested in test_quality_analyze
        from tunesmith.data.quality import analyze

        monkeypatch.setattr(analyze, "render_html", lambda report: "<html></html>\n")
        _inspect(case, path, tmp_path)
    elif command == "clean":
        _clean(case, path, tmp_path)
    else:
        built = request.getfixturevalue("train_stops_after_data")
        model_dir = request.getfixturevalue("tiny_model_dir")
        _train(case, path, tmp_path, built, model_dir)


def _inspect(case: Case, path: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = runner.invoke(
        app, ["data", "inspect", str(path), "--out", str(out), "--format", case.fmt]
    )
    _no_traceback(result)
    if result.exit_code != 0:
        _one_line_error(result, path)
        assert case.reason is None, result.output  # a readable file reports, not stops
        return
    report = json.loads((out / "inspect.json").read_text("utf-8"))
    counts = report["records"]
    assert counts["read"] == counts["valid"] + counts["malformed"]
    if counts["malformed"] <= len(report["malformed"]["examples"]):
        found = [(e["where"], e["reason"]) for e in report["malformed"]["examples"]]
        _check_reason(case, path, found)
    if case.name == "jsonl-escaped-nul" or case.name == "csv-nul-byte":
        assert report["nul_bytes"]["records"] == 1
        assert any("NUL" in advice for advice in report["recommendations"])


def _clean(case: Case, path: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean" / "out.jsonl"
    result = runner.invoke(
        app,
        ["data", "clean", str(path), "--out", str(out), "--format", case.fmt, "near_dedup=false"],
    )
    _no_traceback(result)
    if result.exit_code != 0:
        _one_line_error(result, path)
        assert case.reason is None or "clean" in case.file_error, result.output
        return
    assert "clean" not in case.file_error, result.output
    stats = json.loads(Path(f"{out}.stats.json").read_text("utf-8"))
    rejects = [
        json.loads(line) for line in (out.parent / "rejects.jsonl").read_text("utf-8").splitlines()
    ]
    assert stats["read"] == stats["kept"] + stats["rejected"] == stats["kept"] + len(rejects)
    assert all(r["reason"] and r["source"] == str(path) and r["line"] >= 1 for r in rejects)
    where = "{source}:row {line}" if case.file.endswith(".parquet") else "{source}:{line}"
    found = [(where.format(**r), r["reason"]) for r in rejects if r["step"] == "parse"]
    _check_reason(case, path, found)
    if case.name in ("jsonl-escaped-nul", "csv-nul-byte"):
        kept = out.read_text("utf-8")
        assert "\\u0000" not in kept and "\x00" not in kept


def _train(case: Case, path: Path, tmp_path: Path, built: dict, model_dir: Path) -> None:
    runs = tmp_path / "runs"
    result = runner.invoke(
        app,
        [
            "train",
            f"model.name_or_path={model_dir}",
            f"data.train={path}",
            f"data.format={case.fmt}",
            "data.on_error=skip",
            "data.cutoff_len=64",
            f"output.dir={runs}",
            "output.name=run",
        ],
    )
    _no_traceback(result)
    if not isinstance(result.exception, _DataBuilt):
        _one_line_error(result, path)
        assert case.reason is None or not built, result.output
        return
    assert "train" not in case.file_error, result.output
    stats, run = built["stats"], built["run"]
    rejects = (
        [json.loads(line) for line in run.rejects_path.read_text("utf-8").splitlines()]
        if run.rejects_path.exists()
        else []
    )
    assert stats["read"] == stats["examples"] + stats["rejected"] + stats["beyond_max_samples"]
    assert len(rejects) == stats["rejected"]
    assert all(r["reason"] and r["source"] == str(path) and r["line"] >= 1 for r in rejects)
    where = "{source}:row {line}" if case.file.endswith(".parquet") else "{source}:{line}"
    _check_reason(case, path, [(where.format(**r), r["reason"]) for r in rejects])
