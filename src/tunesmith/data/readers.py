"""Read data files into raw records that remember where they came from.

Every record carries its file and starting line, so any later step can point the user at the
exact place to fix. Every failure is a DataError whose message starts with `path:line: `.

`scan_records` is the one reader: it yields a `BadRecord` (file, line, reason) for a record that
cannot be read, and goes on with the next one wherever the format allows it (JSON lines, CSV
rows, the elements of a JSON array that parse but are not objects). Where it cannot go on (a
syntax error inside a JSON array, a CSV quoting error, a corrupt parquet row group) the
BadRecord is `fatal`: the rest of the file was not read. `read_records` is the strict form:
the first BadRecord raises. `data inspect`, `data clean` and training (`data.on_error`) all read
through `scan_records`, so a bad record gets the same reason in each.

Besides syntax, a record is refused when Python could not use it: JSON nested more than
MAX_DEPTH levels (or past the parser's recursion limit), integer literals longer than Python
converts (4300 digits), and lone UTF-16 surrogates escaped in JSON strings ("\\ud800"), which
decode to a str no tokenizer or UTF-8 writer accepts.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunesmith.utils.errors import DataError

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
# CSV cells that hold structured data (lists of turns) are stored as JSON text.
JSON_CSV_COLUMNS = frozenset({"history", "conversations", "messages"})
MAX_DEPTH = 100  # JSON nesting levels a record may have; real records nest a handful
SHOWN_CHARS = 2000  # of an unreadable record's text kept for rejects.jsonl
_WS = re.compile(r"[ \t\n\r]*")  # JSON's own whitespace set
# a \uD800-\uDFFF escape: paired ones decode to one character, a lone one to a surrogate
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class RawRecord:
    source: str  # the file path as given
    line: int  # 1-based line where the record starts (parquet: 1-based row number)
    data: dict

    @property
    def where(self) -> str:
        return _where(self.source, self.line)


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be read: where, why, and its text as read (clipped)."""

    source: str
    line: int
    reason: str
    text: str = ""
    fatal: bool = False  # the reader could not go on: the rest of the file was not read

    @property
    def where(self) -> str:
        return _where(self.source, self.line)

    def error(self) -> DataError:
        return DataError(f"{self.where}: {self.reason}")


def _where(source: str, line: int) -> str:
    if source.lower().endswith(".parquet"):
        return f"{source}:row {line}"
    return f"{source}:{line}"


def read_records(path: str | Path) -> Iterator[RawRecord]:
    """Yield the records of a .json, .jsonl, .csv, .parquet or .txt file, in file order;
    the first unreadable record raises DataError (see `scan_records` for the lenient form).

    A .txt file holds plain-text documents, one per line: each non-blank line is a record
    {"text": line}; blank (whitespace-only) lines are separators, as in JSON lines.
    """
    return _strict(scan_records(path))  # file-level problems raise here, at once


def _strict(records: Iterator[RawRecord | BadRecord]) -> Iterator[RawRecord]:
    for record in records:
        if isinstance(record, BadRecord):
            raise record.error()
        yield record


def scan_records(path: str | Path) -> Iterator[RawRecord | BadRecord]:
    """The records of a file in file order, with a BadRecord for each one that cannot be read.

    A missing, unreadable or unsupported file raises DataError at once (one sentence for the
    file); everything found while reading is yielded.
    """
    source = str(path)
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{source}: unsupported file type '{p.suffix or '(none)'}'; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not p.exists():
        raise DataError(f"{source}: no such file")
    if not p.is_file():
        raise DataError(f"{source}: not a file")
    try:
        with p.open("rb") as f:
            head = f.read(2)
    except OSError as e:
        raise DataError(f"{source}: cannot read the file ({e.strerror or e})") from None
    if suffix != ".parquet" and head in _UTF16_BOMS:
        raise DataError(f"{source}: the file is UTF-16 encoded; save it as UTF-8")
    readers = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".txt": _read_txt}
    return _guarded(readers.get(suffix, _read_parquet)(p, source), source)


def _guarded(records: Iterator, source: str) -> Iterator[RawRecord | BadRecord]:
    """An I/O error while reading ends the file with a fatal BadRecord, not a traceback."""
    line = 0
    try:
        for record in records:
            line = record.line
            yield record
    except OSError as e:
        yield BadRecord(source, line + 1, f"cannot read the file ({e.strerror or e})", fatal=True)


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def _json_reason(e: json.JSONDecodeError) -> str:
    return f"invalid JSON: {e.msg} (column {e.colno})"


def _decode_problem(e: Exception) -> str:
    """The reason for what json raised besides JSONDecodeError (handled by the caller)."""
    if isinstance(e, RecursionError):
        return "invalid JSON: nested too deeply for the JSON parser"
    # ValueError: an integer literal longer than Python converts (sys.get_int_max_str_digits)
    limit = sys.get_int_max_str_digits()
    return f"invalid JSON: an integer literal has more than {limit} digits"


def _loads(text: str) -> tuple[object, str | None]:
    """(value, None) or (None, reason) for one JSON text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, _json_reason(e)
    except (RecursionError, ValueError) as e:
        return None, _decode_problem(e)
    return value, _value_problem(value, text)


def _value_problem(value: object, text: str) -> str | None:
    """Why a parsed JSON value cannot be used, or None. Walks the value only when its text
    could hide a problem (many brackets, a surrogate escape), so the common record costs two
    counts and a search."""
    deep = text.count("[") + text.count("{") > MAX_DEPTH
    surrogates = _SURROGATE_ESCAPE.search(text) is not None
    if not (deep or surrogates):
        return None
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                return f"nested more than {MAX_DEPTH} levels deep"
            stack += [(k, depth) for k in node] + [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                return f"nested more than {MAX_DEPTH} levels deep"
            stack += [(v, depth + 1) for v in node]
        elif surrogates and isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError as e:
                code = ord(node[e.start])
                return (
                    f"contains a lone UTF-16 surrogate (\\u{code:04x}), which is not valid "
                    "text; fix the escape or drop the record"
                )
    return None


def _object(value: object, text: str, source: str, line: int) -> RawRecord | BadRecord:
    if not isinstance(value, dict):
        reason = f"expected a JSON object, got {type(value).__name__}"
        return BadRecord(source, line, reason, _clip(text))
    return RawRecord(source, line, value)


def _decode_utf8(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 text ({e.reason})"


def _read_json(p: Path, source: str) -> Iterator[RawRecord | BadRecord]:
    # A .json file must be read whole anyway (arrays are not line-delimited).
    raw = p.read_bytes()
    text, reason = _decode_utf8(raw)
    if text is None:
        try:
            raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = 1 + raw.count(b"\n", 0, e.start)
        yield BadRecord(source, line, reason, fatal=True)
        return
    pos = _WS.match(text).end()
    if pos == len(text):
        return
    is_array = text[pos] == "["
    if is_array:  # otherwise: JSON lines (or concatenated objects) misnamed .json
        pos = _WS.match(text, pos + 1).end()
    decoder = json.JSONDecoder()
    # Line of the current element: newlines are counted only between consecutive elements,
    # so the whole file is scanned once (a rescan from 0 per element would be quadratic).
    line, counted = 1, 0

    def fail(at: int, reason: str) -> BadRecord:  # error path: one full count is fine
        return BadRecord(source, text.count("\n", 0, at) + 1, reason, fatal=True)

    while pos < len(text):
        if is_array and text[pos] == "]":
            after = _WS.match(text, pos + 1).end()
            if after != len(text):
                yield fail(after, "invalid JSON: extra data after the closing ']'")
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield BadRecord(source, e.lineno, _json_reason(e), fatal=True)
            return
        except (RecursionError, ValueError) as e:  # where the element ends is unknown
            yield BadRecord(source, line, _decode_problem(e), fatal=True)
            return
        element = text[pos:end]
        problem = _value_problem(value, element)
        if problem:
            yield BadRecord(source, line, problem, _clip(element))
        else:
            yield _object(value, element, source, line)
        pos = _WS.match(text, end).end()
        if is_array:
            if pos < len(text) and text[pos] == ",":
                pos = _WS.match(text, pos + 1).end()
                if pos < len(text) and text[pos] == "]":
                    yield fail(pos, "invalid JSON: trailing comma before ']'")
                    return
            elif pos < len(text) and text[pos] != "]":
                yield fail(pos, "invalid JSON: expected ',' or ']' after an array element")
                return
    if is_array:
        yield fail(len(text), "invalid JSON: unterminated array (missing ']')")


def _read_jsonl(p: Path, source: str) -> Iterator[RawRecord | BadRecord]:
    with p.open("rb") as f:  # bytes, so a bad byte is reported at its own line
        for line, raw in enumerate(f, start=1):
            text, reason = _decode_utf8(raw)
            if text is None:
                yield BadRecord(source, line, reason, _clip(repr(raw)))
                continue
            if not text.strip():
                continue  # blank lines are separators, not records
            text = text.rstrip("\r\n")  # as an editor shows it, so columns match
            value, reason = _loads(text)
            if reason:
                yield BadRecord(source, line, reason, _clip(text))
            else:
                yield _object(value, text, source, line)


def _read_txt(p: Path, source: str) -> Iterator[RawRecord | BadRecord]:
    # Bytes split at b"\n" only: str.splitlines would also split at \u2028, \x0c and the like,
    # and the line numbers would drift from what an editor shows.
    with p.open("rb") as f:
        for line, raw in enumerate(f, start=1):
            text, reason = _decode_utf8(raw)
            if text is None:
                yield BadRecord(source, line, reason, _clip(repr(raw)))
                continue
            text = text.rstrip("\r\n")
            if text.strip():
                yield RawRecord(source, line, {"text": text})


def _read_csv(p: Path, source: str) -> Iterator[RawRecord | BadRecord]:
    # Long documents are normal data: the csv module's default cell limit (128 KiB) is not.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with p.open("rb") as f:
        # Decoded line by line, invalid bytes kept as escapes: a row holding one is rejected at
        # its own line and the rows after it are still read.
        reader = csv.reader(_csv_lines(f))
        try:
            header = next(reader, None)
            if header is None:
                yield BadRecord(source, 1, "empty CSV file; a header row is required", fatal=True)
                return
            if _UNDECODED.search("".join(header)):
                yield BadRecord(source, 1, "not valid UTF-8 text (in the header)", fatal=True)
                return
            while True:
                start = reader.line_num + 1  # a quoted cell may span lines: keep the first
                row = next(reader, None)
                if row is None:
                    return
                if not row:
                    continue  # blank line
                if _UNDECODED.search(text := ",".join(row)):
                    yield BadRecord(source, start, "not valid UTF-8 text", _clip(ascii(text)))
                elif len(row) != len(header):
                    reason = f"row has {len(row)} cells, header has {len(header)}"
                    yield BadRecord(source, start, reason, _clip(text))
                else:
                    yield _csv_record(header, row, source, start)
        except csv.Error as e:
            reason = f"invalid CSV: {e}"
            if "new-line character" in str(e):
                reason = "invalid CSV: lines end with a bare CR; save the file with LF line ends"
            yield BadRecord(source, reader.line_num, reason, fatal=True)


_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)


def _csv_lines(f) -> Iterator[str]:
    for n, raw in enumerate(f):
        if n == 0 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        yield raw.decode("utf-8", "surrogateescape")


def _csv_record(header: list[str], row: list[str], source: str, line: int):
    data: dict = {}
    for name, cell in zip(header, row, strict=True):
        if name in JSON_CSV_COLUMNS and cell.strip():
            value, reason = _loads(cell)
            if reason:
                reason = reason.removeprefix("invalid JSON: ")
                why = f"column '{name}' is not valid JSON: {reason}"
                return BadRecord(source, line, why, _clip(",".join(row)))
            data[name] = value
        else:
            data[name] = cell
    return RawRecord(source, line, data)


def _read_parquet(p: Path, source: str) -> Iterator[RawRecord | BadRecord]:
    import pyarrow.parquet as pq  # heavy import, only when a parquet file is read

    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{source}: not a readable parquet file ({e})") from None
    row = 0
    for group in range(pf.num_row_groups):  # streams: one row group in memory at a time
        try:
            rows = pf.read_row_group(group).to_pylist()
        except Exception as e:
            yield BadRecord(source, row + 1, f"unreadable parquet data ({e})", fatal=True)
            return
        for data in rows:
            row += 1
            yield RawRecord(source, row, data)
