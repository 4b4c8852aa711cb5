"""Where the text readers put rows: Arrow files of string columns, written in bounded batches.

A column whose values are all strings (or null) is stored as strings; any other column as the JSON text of
each value, decoded back on reading by `JsonColumns`. No value is unified with another row's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import datasets
import orjson
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

#: Every digit as "0": a run of 19 of them is a number orjson would read as a float (it holds integers of at
#: most 64 bits). ``translate`` and ``in`` find it ten times faster than a regular expression.
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_DIGITS = b"0" * 19
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
    if not beyond_64_bits(encoded):
        try:
            return orjson.loads(encoded)
        except orjson.JSONDecodeError:  # Infinity (from 1e400, which json reads as inf)
            pass
    return json.loads(text)


def beyond_64_bits(raw: bytes) -> bool:
    """Whether JSON text holds a run of 19+ digits: a number orjson might read as a float."""
    return _LONG_DIGITS in raw.translate(_DIGITS_AS_ZERO)


class RowBatches:
    """Rows written to disk in bounded batches as they are read, so memory does not grow with the file.

    Which columns hold anything but strings is known only once every row has been read, so each batch is
    stored with its own choice (a column of strings as strings, any other as JSON text), and `write_to`
    settles the schema at the end: the union of the columns in first-seen order, nulls where a batch lacks
    a column, and a batch's strings turned to JSON text where the column turned out to hold other values in
    another batch. The batches laid out as the first one (in most files, all of them) go straight to
    ``direct`` (writing is a third of the reader's time: once is enough); the others to temporary files.
    """

    def __init__(self, directory: str, direct: str | None = None) -> None:
        self.directory = directory
        self.direct = direct
        self._layout: tuple[tuple[str, ...], frozenset[str]] | None = None  # the first batch's
        self._writer: ArrowWriter | None = None
        self._direct_batches = False  # whether some batches went to `direct`
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

    def extend(self, rows: list[dict[str, Any]], size: int) -> None:
        """Add rows parsed by orjson (none exact), ``size`` bytes of JSON in all."""
        self._rows.extend(rows)
        self.count += len(rows)
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
        table = pa.Table.from_arrays(arrays, names=list(names))
        layout = (tuple(names), frozenset(json_columns))
        if self._layout is None and self.direct is not None:
            self._layout = layout
            self._writer = _string_writer(self.direct, names)
        if self._writer is not None and not self.files and layout == self._layout:
            self._writer.write_table(table)
            self._direct_batches = True
            return
        path = os.path.join(self.directory, f"batch-{len(self.files):06d}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        self.files.append((path, frozenset(json_columns)))

    def write_to(self, path: str) -> None:
        """Write every batch, in order, to one Arrow file of string columns that ``datasets`` can map."""
        self.flush()
        if self._writer is not None:
            self._writer.finalize()
            self._writer.close()
        if self._direct_batches and not self.files and self.direct is not None:
            os.replace(self.direct, path)  # every batch was laid out as the first: written once
            return
        writer = _string_writer(path, self.columns)
        try:
            if self._direct_batches and self.direct is not None and self._layout is not None:
                self._write_settled(writer, self.direct, self._layout[1])
                os.remove(self.direct)
            for file, json_columns in self.files:
                with pa.memory_map(file) as source:
                    table = pa.ipc.open_file(source).read_all()
                writer.write_table(self._settled(table, json_columns))
                os.remove(file)
            writer.finalize()
        finally:
            writer.close()

    def rewrite(self, source: str, json_columns: frozenset[str], path: str) -> None:
        """Rewrite an Arrow stream file written with ``json_columns`` to this reader's settled columns."""
        writer = _string_writer(path, self.columns)
        try:
            self._write_settled(writer, source, json_columns)
            writer.finalize()
        finally:
            writer.close()

    def _write_settled(self, writer: ArrowWriter, source: str, json_columns: frozenset[str]) -> None:
        """Append an Arrow stream file's batches, settled, to ``writer``."""
        with pa.memory_map(source) as stream:
            for batch in pa.ipc.open_stream(stream):
                writer.write_table(self._settled(pa.Table.from_batches([batch]), json_columns))

    def _settled(self, table: pa.Table, json_columns: frozenset[str]) -> pa.Table:
        """A batch with every column of the file: nulls where it has none, and its strings as JSON text
        where the column holds other values elsewhere."""
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
        return pa.Table.from_arrays(arrays, names=list(self.columns))


def _string_writer(path: str, names: Iterable[str]) -> ArrowWriter:
    """A ``datasets`` Arrow writer of string columns (every column this reader stores is one)."""
    return ArrowWriter(
        path=path, features=datasets.Features({name: datasets.Value("string") for name in names})
    )


def _dumps(value: Any, exact: bool = False) -> bytes | str:
    """JSON text of a value: orjson's bytes (Arrow takes them as they are), or ``json``'s for a row ``json``
    parsed (``exact``: an integer beyond 64 bits, or 1e400 read as inf, which orjson would write as null)."""
    return json.dumps(value, ensure_ascii=False) if exact else orjson.dumps(value)
