"""Read data files into raw records that remember where they came from.

Every record carries its file and starting line, so any later step can point the user at the
exact place to fix. Every failure is a DataError whose message starts with `path:line: `.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunesmith.utils.errors import DataError

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
# CSV cells that hold structured data (lists of turns) are stored as JSON text.
JSON_CSV_COLUMNS = frozenset({"history", "conversations", "messages"})
_WS = re.compile(r"[ \t\n\r]*")  # JSON's own whitespace set


@dataclass(frozen=True)
class RawRecord:
    source: str  # the file path as given
    line: int  # 1-based line where the record starts (parquet: 1-based row number)
    data: dict

    @property
    def where(self) -> str:
        if self.source.lower().endswith(".parquet"):
            return f"{self.source}:row {self.line}"
        return f"{self.source}:{self.line}"


def read_records(path: str | Path) -> Iterator[RawRecord]:
    """Yield the records of a .json, .jsonl, .csv, .parquet or .txt file, in file order.

    A .txt file holds plain-text documents, one per line: each non-blank line is a record
    {"text": line}; blank (whitespace-only) lines are separators, as in JSON lines.
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
    readers = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".txt": _read_txt}
    return readers.get(suffix, _read_parquet)(p, source)


def _object(data: object, source: str, line: int) -> dict:
    if not isinstance(data, dict):
        raise DataError(f"{source}:{line}: expected a JSON object, got {type(data).__name__}")
    return data


def _json_reason(e: json.JSONDecodeError) -> str:
    return f"invalid JSON: {e.msg} (column {e.colno})"


def _decode_utf8(raw: bytes, source: str, first_line: int = 1) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = first_line + raw.count(b"\n", 0, e.start)
        raise DataError(f"{source}:{line}: not valid UTF-8 text ({e.reason})") from None


def _read_json(p: Path, source: str) -> Iterator[RawRecord]:
    # A .json file must be read whole anyway (arrays are not line-delimited).
    text = _decode_utf8(p.read_bytes(), source)
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

    def fail(at: int, reason: str) -> DataError:  # error path: one full count is fine
        line_at = text.count("\n", 0, at) + 1
        return DataError(f"{source}:{line_at}: {reason}")

    while pos < len(text):
        if is_array and text[pos] == "]":
            after = _WS.match(text, pos + 1).end()
            if after != len(text):
                raise fail(after, "invalid JSON: extra data after the closing ']'")
            return
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}:{e.lineno}: {_json_reason(e)}") from None
        line += text.count("\n", counted, pos)
        counted = pos
        yield RawRecord(source, line, _object(value, source, line))
        pos = _WS.match(text, end).end()
        if is_array:
            if pos < len(text) and text[pos] == ",":
                pos = _WS.match(text, pos + 1).end()
                if pos < len(text) and text[pos] == "]":
                    raise fail(pos, "invalid JSON: trailing comma before ']'")
            elif pos < len(text) and text[pos] != "]":
                raise fail(pos, "invalid JSON: expected ',' or ']' after an array element")
    if is_array:
        raise fail(len(text), "invalid JSON: unterminated array (missing ']')")


def _read_jsonl(p: Path, source: str) -> Iterator[RawRecord]:
    with p.open("rb") as f:  # bytes, so a bad byte is reported at its own line
        for line, raw in enumerate(f, start=1):
            text = _decode_utf8(raw, source, line).strip()
            if not text:
                continue  # blank lines are separators, not records
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{source}:{line}: {_json_reason(e)}") from None
            yield RawRecord(source, line, _object(value, source, line))


def _read_txt(p: Path, source: str) -> Iterator[RawRecord]:
    # Bytes split at b"\n" only: str.splitlines would also split at \u2028, \x0c and the like,
    # and the line numbers would drift from what an editor shows.
    with p.open("rb") as f:
        for line, raw in enumerate(f, start=1):
            text = _decode_utf8(raw, source, line).rstrip("\r\n")
            if text.strip():
                yield RawRecord(source, line, {"text": text})


def _read_csv(p: Path, source: str) -> Iterator[RawRecord]:
    with p.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{source}:1: empty CSV file; a header row is required")
            while True:
                start = reader.line_num + 1  # a quoted cell may span lines: keep the first
                row = next(reader, None)
                if row is None:
                    return
                if not row:
                    continue  # blank line
                if len(row) != len(header):
                    raise DataError(
                        f"{source}:{start}: row has {len(row)} cells, header has {len(header)}"
                    )
                yield RawRecord(source, start, _csv_record(header, row, source, start))
        except csv.Error as e:
            raise DataError(f"{source}:{reader.line_num}: invalid CSV: {e}") from None
        except UnicodeDecodeError as e:
            line = reader.line_num + 1
            raise DataError(f"{source}:{line}: not valid UTF-8 text ({e.reason})") from None


def _csv_record(header: list[str], row: list[str], source: str, line: int) -> dict:
    data: dict = {}
    for name, cell in zip(header, row, strict=True):
        if name in JSON_CSV_COLUMNS and cell.strip():
            try:
                data[name] = json.loads(cell)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{source}:{line}: column '{name}' is not valid JSON: {e.msg}"
                ) from None
        else:
            data[name] = cell
    return data


def _read_parquet(p: Path, source: str) -> Iterator[RawRecord]:
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
            raise DataError(f"{source}:row {row + 1}: unreadable parquet data ({e})") from None
        for data in rows:
            row += 1
            yield RawRecord(source, row, data)
