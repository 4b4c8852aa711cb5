"""Reading jsonl, json and csv files ourselves: exact row numbers, and no value changed by type inference.

``datasets``' JSON builder guesses one Arrow type per column per block of ~320 KB; where rows disagree it
falls back to pandas, which decodes strings that look like JSON (``"42"`` becomes 42), and its errors name
a row within a block, not within the file. Here every line is parsed with ``json`` (an error names its
line and the row it would have been), and every top-level column is stored as written: a column whose
values are all strings (or null) as an Arrow string column, any other column as the JSON text of each
value, decoded back on reading by `JsonColumns` (see `lit_sft.data.row_store`). No value is unified with another row's: no struct field
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
import multiprocessing
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import datasets
import orjson

from lit_sft.data.processes import usable_cores
from lit_sft.data.row_store import JsonColumns, RowBatches, beyond_64_bits
from lit_sft.errors import DataFileError
from lit_sft.io import atomic_write

#: Bump when the stored rows change for the same file, so that old caches are not reused.
READER_VERSION = "3"
#: Deepest nesting accepted. Python's ``json`` recurses once per level; a bound well under the interpreter's
#: recursion limit keeps every later decode (inside ``datasets.map``, in a chat template) from overflowing.
MAX_DEPTH = 200
BOM = b"\xef\xbb\xbf"
#: A JSON string (skipped whole, so brackets inside strings do not count) or a bracket.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_SURROGATE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_CONTAINERS = (dict, list)
#: Bytes a parsing worker reads at a time (it holds about three times this while splitting it into lines).
PIECE_BYTES = 4 * 2**20
#: Lines parsed together (see `_block`).
BLOCK_LINES = 256
#: A jsonl file is parsed by one worker process per this many bytes (up to the usable cores).
PARALLEL_BYTES = 32 * 2**20


class _Unreadable(Exception):
    """A line that is not a row: its 1-based line number and what is wrong."""

    def __init__(self, line: int, reason: str, where: str = "", row: int | None = None) -> None:
        super().__init__(reason)
        self.line, self.reason, self.where, self.row = line, reason, where or f"line {line}", row

    def message(self) -> str:
        return f"{self.where} {self.reason}" + ("" if self.row is None else f"; row {self.row}")


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
    if not beyond_64_bits(raw):
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


def _json_lines(lines: Iterable[bytes], rows: RowBatches, file_start: bool = True) -> int:
    """Add the rows of JSON lines; returns the number of lines (blank ones included)."""
    block: list[bytes] = []
    line = 0
    for line, raw in enumerate(lines, start=1):
        if line == 1 and file_start and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        block.append(raw)
        if len(block) == BLOCK_LINES:
            _block(block, line - len(block) + 1, rows)
            block = []
    if block:
        _block(block, line - len(block) + 1, rows)
    return line


def _block(block: list[bytes], first_line: int, rows: RowBatches) -> None:
    """Parse consecutive lines: all at once when each is a plain row (the common case: a few microseconds a
    line, no Python statement per line), else line by line, which names the first bad line exactly."""
    text = [raw for raw in block if raw[:1] == b"{" or raw.strip()]  # blank lines are not rows
    joined = b"".join(text)
    if not beyond_64_bits(joined):
        try:
            values = list(map(orjson.loads, text))
        except orjson.JSONDecodeError:
            values = []
        # A line with more brackets than MAX_DEPTH (a tool-use row with many schemas, a long conversation)
        # has its parsed value's depth measured: scanning its text token by token cost 10x the parse.
        if (
            len(values) == len(text)
            and all(type(value) is dict for value in values)
            and all(
                _nesting(value) <= MAX_DEPTH
                for raw, value in zip(text, values, strict=True)
                if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
            )
        ):
            rows.extend(values, len(joined))
            return
    for line, raw in enumerate(block, start=first_line):
        if raw[:1] == b"{" or raw.strip():
            try:
                row, exact = _parse_row(raw.rstrip(b"\r\n"), line)
            except _Unreadable as error:
                error.row = rows.count
                raise
            rows.add(row, len(raw), exact)


def _nesting(value: Any) -> int:
    """How many arrays and objects deep a parsed value goes (``{"a": [1]}``: 2), without recursion."""
    deepest, level = 0, [value] if type(value) in _CONTAINERS else []
    while level:  # one level of containers at a time
        deepest += 1
        level = [
            child
            for item in level
            for child in (item.values() if type(item) is dict else item)
            if type(child) in _CONTAINERS
        ]
    return deepest


def _lines_between(handle: io.BufferedIOBase, start: int, end: int) -> Iterator[bytes]:
    """The lines from byte ``start`` (which begins a line) to byte ``end`` (a line's start, or the end),
    read in `PIECE_BYTES` pieces and split in C (a Python step per line was a tenth of the reading time)."""
    handle.seek(start)
    remaining, tail = end - start, b""
    while remaining > 0:
        piece = handle.read(min(remaining, PIECE_BYTES))
        if not piece:
            break
        remaining -= len(piece)
        lines = (tail + piece).split(b"\n")
        tail = lines.pop()  # a line that continues in the next piece ("" after a newline)
        yield from lines
    if tail:
        yield tail


@dataclass
class _Chunk:
    """What a worker read of one byte range of a jsonl file: its batches, or its first bad line."""

    lines: int = 0
    count: int = 0
    columns: list[str] = field(default_factory=list)
    not_strings: set[str] = field(default_factory=set)
    file: str | None = None  # the range's rows, settled among themselves
    error: tuple[int, str, int] | None = None  # the bad line, what is wrong, its row (an exception of
    # its own would not survive pickling: its __init__ takes more than its args)


def _read_chunk(path: str, start: int, end: int, directory: str) -> _Chunk:
    """Read one byte range into one Arrow file of its own (``directory``/rows.arrow), written once."""
    rows, chunk = RowBatches(directory, direct=os.path.join(directory, "direct.arrow")), _Chunk()
    with open(path, "rb") as handle:
        try:
            chunk.lines = _json_lines(_lines_between(handle, start, end), rows, file_start=start == 0)
        except _Unreadable as error:
            chunk.error = (error.line, error.reason, error.row or 0)
            return chunk
    rows.flush()
    chunk.count, chunk.columns, chunk.not_strings = rows.count, list(rows.columns), rows.not_strings
    if rows.count:
        chunk.file = os.path.join(directory, "rows.arrow")
        rows.write_to(chunk.file)
    return chunk


def _chunk_starts(path: str, chunks: int) -> list[int]:
    """Byte offsets that begin ``chunks`` ranges of whole lines (fewer for a file of few lines)."""
    size = os.path.getsize(path)
    starts = [0]
    with open(path, "rb") as handle:
        for index in range(1, chunks):
            handle.seek(max(index * size // chunks - 1, starts[-1]))
            handle.readline()  # to the start of the next line
            if handle.tell() >= size:
                break
            if handle.tell() > starts[-1]:
                starts.append(handle.tell())
    return starts


def _parallel_json_lines(path: str, rows: RowBatches, processes: int) -> list[str]:
    """Parse a plain jsonl file in ``processes`` forked workers, one byte range each (the parsing is
    CPU-bound Python, so threads would not help); returns one Arrow file per range, in file order, each
    written once (a range whose columns differ from the whole file's is rewritten to match). Line and row
    numbers in errors count from the file's start: each range's come after the lines and rows before it,
    and the first range with a bad line names it."""
    starts = _chunk_starts(path, processes)
    ends = [*starts[1:], os.path.getsize(path)]
    directories = [tempfile.mkdtemp(dir=rows.directory, prefix=f"chunk-{i}-") for i in range(len(starts))]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(len(starts), mp_context=context) as pool:
        chunks = list(pool.map(_read_chunk, [path] * len(starts), starts, ends, directories))
    lines = 0
    for chunk in chunks:
        if chunk.error is not None:
            line, reason, row = chunk.error
            raise _Unreadable(lines + line, reason, row=rows.count + row)
        for name in chunk.columns:
            rows.columns.setdefault(name, None)
        rows.not_strings |= chunk.not_strings
        rows.count += chunk.count
        lines += chunk.lines
    files = []
    for chunk in chunks:
        if chunk.file is None:
            continue
        if chunk.columns != list(rows.columns) or chunk.not_strings != rows.not_strings:
            settled = chunk.file + ".settled"
            rows.rewrite(chunk.file, frozenset(chunk.not_strings), settled)
            os.replace(settled, chunk.file)
        files.append(chunk.file)
    return files


def _reader_processes(path: str) -> int:
    """Workers for a jsonl file: one per `PARALLEL_BYTES` of it, up to the usable cores (at most 8)."""
    if path.lower().endswith(".gz"):  # a gzip stream cannot be entered in the middle
        return 1
    return max(1, min(8, usable_cores(), os.path.getsize(path) // PARALLEL_BYTES))


def _json_document(handle: io.BufferedIOBase, rows: RowBatches) -> None:
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


def _csv(lines: Iterable[bytes], rows: RowBatches) -> None:
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


def _decoded_lines(lines: Iterable[bytes], rows: RowBatches) -> Iterator[str]:
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


def _read(path: str, kind: str, rows: RowBatches) -> list[str]:
    """Read the file's rows; returns the Arrow files that hold them, in order."""
    if kind == "jsonl" and (processes := _reader_processes(path)) > 1:
        return _parallel_json_lines(path, rows, processes)
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        if kind == "jsonl":
            _json_lines(handle, rows)
        elif kind == "json":
            _json_document(handle, rows)
        else:
            _csv(handle, rows)
    if rows.count == 0:
        return []
    rows.write_to(os.path.join(rows.directory, "rows.arrow"))
    return [os.path.join(rows.directory, "rows.arrow")]


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
    manifest = os.path.join(directory, "rows.json")  # written last: the files and the JSON-text columns
    if not os.path.isfile(manifest):
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-batches-") as batches:
            rows = RowBatches(batches, direct=os.path.join(batches, "direct.arrow"))
            try:
                files = _read(path, kind, rows)
            except _Unreadable as error:
                raise DataFileError(f"{name}: cannot read it: {error.message()}") from None
            except (OSError, EOFError, zlib.error) as error:  # a truncated or corrupt .gz
                raise DataFileError(f"{name}: cannot read it: {type(error).__name__}: {error}") from None
            if rows.count == 0:
                raise DataFileError(f"{name}: the file has no rows")
            if not rows.columns:
                raise DataFileError(f"{name}: its rows have no keys (every row is {{}})")
            names = [f"rows-{index:05d}.arrow" for index in range(len(files))]
            for file, stored in zip(files, names, strict=True):
                # Every rank reading the same file writes the same bytes: replacing one is harmless.
                os.replace(file, os.path.join(directory, stored))
            content = json.dumps({"files": names, "json_columns": sorted(rows.not_strings)})
            with atomic_write(manifest, encoding="utf-8") as handle:  # ranks reading at once never see half
                handle.write(content)
    with open(manifest, encoding="utf-8") as handle:
        stored = json.load(handle)
    parts = [datasets.Dataset.from_file(os.path.join(directory, file)) for file in stored["files"]]
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return dataset.with_transform(JsonColumns(stored["json_columns"])) if stored["json_columns"] else dataset


csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # rows hold whole conversations; the default is 128 KiB
