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
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import datasets
import orjson
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

from lit_sft.errors import DataFileError

#: Bump when the stored rows change for the same file, so that old caches are not reused.
READER_VERSION = "2"
#: Deepest nesting accepted. Python's ``json`` recurses once per level; a bound well under the interpreter's
#: recursion limit keeps every later decode (inside ``datasets.map``, in a chat template) from overflowing.
MAX_DEPTH = 200
BOM = b"\xef\xbb\xbf"
#: A JSON string (skipped whole, so brackets inside strings do not count) or a bracket.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_SURROGATE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
#: A run of digits orjson would read as a float (it holds integers of at most 64 bits).
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
#: A batch goes to disk at this many rows or bytes of JSON, whichever comes first: the reader's memory.
BATCH_ROWS = 8192
BATCH_BYTES = 16 * 2**20


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
                batch[name] = [None if text is None else loads_text(text) for text in batch[name]]
        return batch


def loads_text(text: str) -> Any:
    """Decode JSON text this reader wrote: orjson, or ``json`` where orjson would not read it back exactly."""
    encoded = text.encode("utf-8")
    if not _LONG_DIGITS.search(encoded):
        try:
            return orjson.loads(encoded)
        except orjson.JSONDecodeError:  # Infinity (from 1e400, which json reads as inf)
            pass
    return json.loads(text)


class _Unreadable(Exception):
    """A line that is not a row: its 1-based line number and what is wrong."""

    def __init__(self, line: int, reason: str, where: str = "", row: int | None = None) -> None:
        super().__init__(reason)
        self.line, self.reason, self.where, self.row = line, reason, where or f"line {line}", row

    def message(self) -> str:
        return f"{self.where} {self.reason}" + ("" if self.row is None else f"; row {self.row}")


class _Batches:
    """Rows written to disk in bounded batches as they are read, so memory does not grow with the file.

    Which columns hold anything but strings is known only once every row has been read, so each batch is
    stored with its own choice (a column of strings as strings, any other as JSON text) in a temporary
    Arrow file, and `write_to` settles the schema at the end: the union of the columns in first-seen order,
    nulls where a batch lacks a column, and a batch's strings turned to JSON text where the column turned
    out to hold other values in another batch.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.columns: dict[str, None] = {}  # every column, in first-seen order
        self.not_strings: set[str] = set()
        self.count = 0
        self.files: list[tuple[str, frozenset[str]]] = []  # a batch's file and its JSON-text columns
        self._rows: list[dict[str, Any]] = []
        self._exact: list[int] = []  # rows `json` parsed (big integers, 1e400): `json` writes them back
        self._bytes = 0

    def add(self, row: dict[str, Any], size: int = 0, exact: bool = False) -> None:
        if exact:
            self._exact.append(len(self._rows))
        self._rows.append(row)
        self.count += 1
        self._bytes += size
        if len(self._rows) >= BATCH_ROWS or self._bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        rows, exact = self._rows, set(self._exact)
        if not rows:
            return
        self._rows, self._exact, self._bytes = [], [], 0
        names = dict.fromkeys(key for row in rows for key in row)
        arrays, json_columns = [], set()
        for name in names:
            self.columns.setdefault(name, None)
            values = [row.get(name) for row in rows]
            if any(value is not None and not isinstance(value, str) for value in values):
                json_columns.add(name)
                values = [
                    None if value is None else _dumps(value, exact=index in exact)
                    for index, value in enumerate(values)
                ]
            arrays.append(pa.array(values, type=pa.string()))
        self.not_strings |= json_columns
        path = os.path.join(self.directory, f"batch-{len(self.files):06d}.arrow")
        table = pa.Table.from_arrays(arrays, names=list(names))
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        self.files.append((path, frozenset(json_columns)))

    def write_to(self, path: str) -> None:
        """Write every batch, in order, to one Arrow file of string columns that ``datasets`` can map."""
        self.flush()
        names = list(self.columns)
        writer = ArrowWriter(
            path=path, features=datasets.Features({name: datasets.Value("string") for name in names})
        )
        try:
            for file, json_columns in self.files:
                with pa.memory_map(file) as source:
                    table = pa.ipc.open_file(source).read_all()
                    writer.write_table(pa.Table.from_arrays(self._settled(table, json_columns), names=names))
                os.remove(file)
            writer.finalize()
        finally:
            writer.close()

    def _settled(self, table: pa.Table, json_columns: frozenset[str]) -> list[pa.Array]:
        arrays = []
        for name in self.columns:
            if name not in table.column_names:
                arrays.append(pa.nulls(table.num_rows, pa.string()))
            elif name in self.not_strings and name not in json_columns:  # strings beside other values
                texts = table.column(name).to_pylist()
                arrays.append(
                    pa.array([None if text is None else _dumps(text) for text in texts], pa.string())
                )
            else:
                arrays.append(table.column(name))
        return arrays


def _dumps(value: Any, exact: bool = False) -> str:
    """JSON text of a parsed value; ``json`` for what orjson cannot write as read (``Infinity``, big ints)."""
    if not exact:
        try:
            return orjson.dumps(value).decode("utf-8")
        except (TypeError, orjson.JSONEncodeError):
            pass
    return json.dumps(value, ensure_ascii=False)


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


def _parse(raw: bytes, first_line: int = 1, allowed: int = MAX_DEPTH) -> tuple[Any, bool]:
    """A JSON value, and whether `json` (not orjson) parsed it.

    orjson parses several times faster than ``json`` and accepts a subset of what ``json`` accepts, except
    that it reads an integer beyond 64 bits as a float: a line with a run of 19+ digits, and any line orjson
    refuses, goes to ``json``, which keeps big integers and names the exact error.
    """
    _check_depth(raw, first_line, allowed)
    if not _LONG_DIGITS.search(raw):
        try:
            return orjson.loads(raw), False
        except orjson.JSONDecodeError:
            pass
    return _loads(_decode_utf8(raw, first_line), raw, first_line), True


def _parse_row(raw: bytes, line: int) -> tuple[dict[str, Any], bool]:
    value, exact = _parse(raw, line)
    if not isinstance(value, dict):
        raise _Unreadable(line, f"is a JSON {_kind(value)}, not an object (each line must hold one row)")
    return value, exact


def _json_lines(lines: Iterable[bytes], rows: _Batches) -> None:
    for line, raw in enumerate(lines, start=1):
        if line == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        if raw.strip():  # blank lines are not rows
            try:
                row, exact = _parse_row(raw.rstrip(b"\r\n"), line)
            except _Unreadable as error:
                error.row = rows.count
                raise
            rows.add(row, len(raw), exact)


def _json_document(handle: io.BufferedIOBase, rows: _Batches) -> None:
    """A ``.json`` file: a list of row objects (parsed whole: a JSON list has no record boundary to stream
    by), or JSON lines (streamed)."""
    if _first_byte(handle) != b"[":
        _json_lines(handle, rows)
        return
    raw = handle.read()
    value, exact = _parse(raw[len(BOM) :] if raw.startswith(BOM) else raw, allowed=MAX_DEPTH + 1)
    del raw
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
        rows.add(row, 0, exact)
        value[index] = None  # each row is released once its batch is on disk


def _first_byte(handle: io.BufferedIOBase) -> bytes:
    """The first byte after a BOM and whitespace; the handle is rewound to the start."""
    head = handle.read(len(BOM))
    chunk = b"" if head == BOM else head
    while not chunk.lstrip() and (more := handle.read(65536)):
        chunk += more
    handle.seek(0)
    return chunk.lstrip()[:1]


def _csv(lines: Iterable[bytes], rows: _Batches) -> None:
    """A csv file with a header line; every value stays the string it is (no type inference)."""
    reader = csv.reader(_decoded_lines(lines, rows))
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
                    row=rows.count,
                )
            rows.add(dict(zip(header, record, strict=False)), sum(map(len, record)))
    except csv.Error as error:
        raise _Unreadable(reader.line_num, f"is not valid csv ({error})", row=rows.count) from None


def _decoded_lines(lines: Iterable[bytes], rows: _Batches) -> Iterator[str]:
    """Lines decoded one at a time (a UTF-8 character never spans a newline), so an error names its line
    and the row it would be."""
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        try:
            yield _decode_utf8(raw, number)
        except _Unreadable as error:
            error.row = rows.count
            raise


def _read(path: str, kind: str, rows: _Batches) -> None:
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        if kind == "jsonl":
            _json_lines(handle, rows)
        elif kind == "json":
            _json_document(handle, rows)
        else:
            _csv(handle, rows)


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
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-batches-") as batches:
            rows = _Batches(batches)
            try:
                _read(path, kind, rows)
            except _Unreadable as error:
                raise DataFileError(f"{name}: cannot read it: {error.message()}") from None
            except (OSError, EOFError, zlib.error) as error:  # a truncated or corrupt .gz
                raise DataFileError(f"{name}: cannot read it: {type(error).__name__}: {error}") from None
            if rows.count == 0:
                raise DataFileError(f"{name}: the file has no rows")
            rows.flush()
            if not rows.columns:
                raise DataFileError(f"{name}: its rows have no keys (every row is {{}})")
            _write_atomically(
                columns_file, lambda temporary: _write_text(temporary, json.dumps(sorted(rows.not_strings)))
            )
            _write_atomically(rows_file, rows.write_to)
    dataset = datasets.Dataset.from_file(rows_file)
    with open(columns_file, encoding="utf-8") as handle:
        json_columns = json.load(handle)
    return dataset.with_transform(JsonColumns(json_columns)) if json_columns else dataset


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


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
