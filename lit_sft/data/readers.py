"""Reading jsonl, json and csv files ourselves: exact row numbers, and no value changed by type inference.

``datasets``' JSON builder guesses one Arrow type per column per block of ~320 KB; where rows disagree it
falls back to pandas, which decodes strings that look like JSON (``"42"`` becomes 42), and its errors name
a row within a block, not within the file. Here every line is parsed with ``json`` (an error names its
line and the row it would have been), and every top-level column is stored as written: a column whose
values are all strings (or null) as an Arrow string column, any other column as the JSON text of each
value, decoded back on reading by `JsonColumns`. No value is unified with another row's: no struct field
added as null, no int made a float, no string made a number.

The rows are written once to an Arrow file in the ``datasets`` cache, keyed by the file's path, size and
modification time, and memory-mapped, so that ``datasets.map`` caches tokenization beside it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import datasets
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

from lit_sft.errors import DataFileError

#: Bump when the stored rows change for the same file, so that old caches are not reused.
READER_VERSION = "1"
#: Deepest nesting accepted. Python's ``json`` recurses once per level; a bound well under the interpreter's
#: recursion limit keeps every later decode (inside ``datasets.map``, in a chat template) from overflowing.
MAX_DEPTH = 200
BOM = b"\xef\xbb\xbf"
#: A JSON string (skipped whole, so brackets inside strings do not count) or a bracket.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_SURROGATE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


class JsonColumns:
    """The ``datasets`` transform that decodes the columns stored as JSON text back to what was written.

    Args:
        columns: The names of those columns.
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = tuple(sorted(columns))  # sorted: the transform is hashed into the fingerprint

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name in self.columns:
            if name in batch:
                batch[name] = [None if text is None else json.loads(text) for text in batch[name]]
        return batch


class _Unreadable(Exception):
    """A line that is not a row: its 1-based line number and what is wrong."""

    def __init__(self, line: int, reason: str, where: str = "", row: int | None = None) -> None:
        super().__init__(reason)
        self.line, self.reason, self.where, self.row = line, reason, where or f"line {line}", row

    def message(self) -> str:
        return f"{self.where} {self.reason}" + ("" if self.row is None else f"; row {self.row}")


class _Columns:
    """Rows gathered column by column, as written; remembers which columns hold anything but strings."""

    def __init__(self) -> None:
        self.values: dict[str, list[Any]] = {}
        self.count = 0
        self.not_strings: set[str] = set()

    def add(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            column = self.values.get(key)
            if column is None:
                column = self.values[key] = [None] * self.count
            column.append(value)
            if value is not None and not isinstance(value, str):
                self.not_strings.add(key)
        self.count += 1
        for column in self.values.values():
            if len(column) < self.count:  # the row lacks this key
                column.append(None)

    def table(self) -> pa.Table:
        arrays = {}
        for key, column in self.values.items():
            if key in self.not_strings:
                column = [
                    None if value is None else json.dumps(value, ensure_ascii=False) for value in column
                ]
            arrays[key] = pa.array(column, type=pa.string())
        return pa.table(arrays)


def _kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_depth(raw: bytes, first_line: int = 1, allowed: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than ``allowed`` before ``json`` recurses into it."""
    if raw.count(b"[") + raw.count(b"{") <= allowed:
        return
    depth = 0
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > allowed:
                line = first_line + raw.count(b"\n", 0, match.start())
                raise _Unreadable(line, f"is nested more than {allowed} levels deep")
        elif token in (b"]", b"}"):
            depth -= 1


def _decode_utf8(raw: bytes, first_line: int = 1) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + raw.count(b"\n", 0, error.start)
        start = raw.rfind(b"\n", 0, error.start) + 1
        raise _Unreadable(
            line, f"is not valid UTF-8 ({error.reason} at byte {error.start - start})"
        ) from None


def _loads(text: str, raw: bytes, first_line: int = 1) -> Any:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        line = first_line + error.lineno - 1
        raise _Unreadable(line, f"is not valid JSON ({error.msg}, column {error.colno})") from None
    except RecursionError:
        raise _Unreadable(first_line, "is nested too deeply") from None
    except ValueError as error:  # NaN/Infinity, or an integer beyond Python's digit limit
        raise _Unreadable(first_line, f"is not valid JSON ({error})") from None
    if _SURROGATE.search(raw):  # "\ud800" parses, but no UTF-8 (hence no Arrow string) can hold it
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _Unreadable(
                first_line, "holds a lone UTF-16 surrogate (\\ud800-\\udfff), not text"
            ) from None
    return value


def _parse_row(raw: bytes, line: int) -> dict[str, Any]:
    _check_depth(raw, line)
    value = _loads(_decode_utf8(raw, line), raw, line)
    if not isinstance(value, dict):
        raise _Unreadable(line, f"is a JSON {_kind(value)}, not an object (each line must hold one row)")
    return value


def _json_lines(lines: Iterable[bytes], columns: _Columns) -> None:
    for line, raw in enumerate(lines, start=1):
        if line == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        if raw.strip():  # blank lines are not rows
            try:
                columns.add(_parse_row(raw.rstrip(b"\r\n"), line))
            except _Unreadable as error:
                error.row = columns.count
                raise


def _json_document(raw: bytes, columns: _Columns) -> None:
    """A ``.json`` file: a list of row objects, or JSON lines."""
    if raw.startswith(BOM):
        raw = raw[len(BOM) :]
    if not raw.lstrip().startswith(b"["):
        _json_lines(raw.splitlines(keepends=True), columns)
        return
    _check_depth(raw, allowed=MAX_DEPTH + 1)
    value = _loads(_decode_utf8(raw), raw)
    if not isinstance(value, list):  # "[1] x" fails to parse above; kept for the type checker
        raise _Unreadable(1, "is not a list of rows")
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            raise _Unreadable(
                1,
                f"is a JSON {_kind(row)}, not an object (rows must be objects)",
                where=f"element {index}",
                row=index,
            )
        columns.add(row)


def _csv(raw: bytes, columns: _Columns) -> None:
    """A csv file with a header line; every value stays the string it is (no type inference)."""
    if raw.startswith(BOM):
        raw = raw[len(BOM) :]
    try:
        text = _decode_utf8(raw)
    except _Unreadable as error:  # name the row too: count the records before the bad line
        start = sum(len(line) for line in raw.splitlines(keepends=True)[: error.line - 1])
        records = [
            record for record in csv.reader(io.StringIO(raw[:start].decode("utf-8"), newline="")) if record
        ]
        error.row = max(len(records) - 1, 0)
        raise
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise _Unreadable(1, "is not a csv header")
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise _Unreadable(1, f"(the header) names column {repeated[0]!r} twice")
        for record in reader:
            if not record:
                continue
            if len(record) > len(header):
                raise _Unreadable(
                    reader.line_num,
                    f"has {len(record)} fields; the header has {len(header)}",
                    row=columns.count,
                )
            columns.add(dict(zip(header, record, strict=False)))
    except csv.Error as error:
        raise _Unreadable(reader.line_num, f"is not valid csv ({error})", row=columns.count) from None


def _read(path: str, kind: str) -> _Columns:
    columns = _Columns()
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        if kind == "jsonl":
            _json_lines(handle, columns)
        elif kind == "json":
            _json_document(handle.read(), columns)
        else:
            _csv(handle.read(), columns)
    return columns


def _cache_directory(path: str, cache_dir: str | None) -> str:
    stat = os.stat(path)
    key = f"{READER_VERSION}|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    root = cache_dir or datasets.config.HF_DATASETS_CACHE
    return os.path.join(str(root), "lit_sft_rows", hashlib.sha256(key.encode()).hexdigest()[:24])


def read_rows(path: str, kind: str, name: str, cache_dir: str | None = None) -> datasets.Dataset:
    """Read a ``jsonl``, ``json`` or ``csv`` file to a memory-mapped dataset whose rows are the file's, as written.

    Args:
        path: The file (``.gz`` compressed or not).
        kind: ``jsonl``, ``json`` or ``csv``.
        name: The file as error messages name it.
        cache_dir: ``datasets`` cache directory (default: the ``datasets`` default).

    Raises:
        DataFileError: Naming the line (and the row it would be) that is not a row: not UTF-8, not JSON,
            not an object, nested more than `MAX_DEPTH` deep; or a file with no rows.
    """
    directory = _cache_directory(path, cache_dir)
    rows_file, columns_file = (
        os.path.join(directory, "rows.arrow"),
        os.path.join(directory, "json_columns.json"),
    )
    if not os.path.isfile(rows_file):
        try:
            columns = _read(path, kind)
        except _Unreadable as error:
            raise DataFileError(f"{name}: cannot read it: {error.message()}") from None
        except (OSError, EOFError, zlib.error) as error:  # a truncated or corrupt .gz
            raise DataFileError(f"{name}: cannot read it: {type(error).__name__}: {error}") from None
        if columns.count == 0:
            raise DataFileError(f"{name}: the file has no rows")
        if not columns.values:
            raise DataFileError(f"{name}: its rows have no keys (every row is {{}})")
        table = columns.table()
        os.makedirs(directory, exist_ok=True)
        _write_atomically(
            columns_file, lambda temporary: _write_text(temporary, json.dumps(sorted(columns.not_strings)))
        )
        _write_atomically(rows_file, lambda temporary: _write_table(temporary, table))
    dataset = datasets.Dataset.from_file(rows_file)
    with open(columns_file, encoding="utf-8") as handle:
        json_columns = json.load(handle)
    return dataset.with_transform(JsonColumns(json_columns)) if json_columns else dataset


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _write_table(path: str, table: pa.Table) -> None:
    features = datasets.Features({name: datasets.Value("string") for name in table.column_names})
    writer = ArrowWriter(path=path, features=features)
    try:
        writer.write_table(table)
        writer.finalize()
    finally:
        writer.close()


def _write_atomically(path: str, write: Any) -> None:
    """Write through a temporary file beside ``path``: ranks reading the same file at once never see half of it."""
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    os.close(descriptor)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # rows hold whole conversations; the default is 128 KiB
