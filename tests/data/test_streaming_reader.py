"""The reader streams (lit_sft.data.readers): rows go to disk in bounded batches, and the file's values, line
numbers and row numbers come out exactly as if it had been read whole (issue 21).

Each test makes batches tiny so that a few rows cross several of them; the reference is the standard
library's ``json`` applied to each line, which no code here wrote.
"""

from __future__ import annotations

import gzip
import json
import math
import tracemalloc

import pytest

from lit_sft.data import readers, row_store
from lit_sft.data.readers import read_rows
from lit_sft.errors import DataFileError


@pytest.fixture
def tiny_batches(monkeypatch) -> None:
    monkeypatch.setattr(row_store, "BATCH_ROWS", 2)


def write_lines(path, lines: list[str]) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(path)


def expected(lines: list[str]) -> dict[str, list]:
    """Column-wise rows as ``json`` reads them, a missing key read as null, columns in first-seen order."""
    rows = [json.loads(line) for line in lines if line.strip()]
    names = list(dict.fromkeys(key for row in rows for key in row))
    return {name: [row.get(name) for row in rows] for name in names}


def test_a_column_that_changes_type_or_appears_in_a_later_batch_keeps_every_value(
    tmp_path, tiny_batches
) -> None:
    lines = [
        '{"a": "1", "b": "x"}',
        '{"a": "two"}',
        '{"a": 2, "c": "late"}',  # batch 2: "a" turns out to hold numbers too; "c" appears
        '{"a": "3", "b": null}',
        '{"d": [1, {"e": "f"}], "a": null}',
    ]
    dataset = read_rows(write_lines(tmp_path / "rows.jsonl", lines), "jsonl", "rows.jsonl", str(tmp_path))
    assert dataset.column_names == ["a", "b", "c", "d"]
    assert dataset[:] == expected(lines)


def test_values_a_fast_parser_would_change_are_read_exactly(tmp_path, tiny_batches) -> None:
    lines = [
        '{"n": 123456789012345678901234567890, "s": "big"}',  # orjson reads integers beyond 64 bits as floats
        '{"n": -9223372036854775809}',
        '{"n": 18446744073709551615, "s": "\\ud83d\\ude00"}',
        '{"n": 1e400}',  # json reads inf; it must stay inf, not become null
        '{"n": 1.0, "s": "1.0"}',
        '{"n": [2, -0.0, 1E5]}',
    ]
    dataset = read_rows(write_lines(tmp_path / "rows.jsonl", lines), "jsonl", "rows.jsonl", str(tmp_path))
    got, want = dataset[:], expected(lines)
    assert got == want
    assert [type(value) for value in got["n"]] == [type(value) for value in want["n"]]
    assert math.isinf(got["n"][3]) and math.copysign(1, got["n"][5][1]) == -1


@pytest.mark.parametrize("gzipped", [False, True])
def test_line_and_row_numbers_hold_across_batches(tmp_path, tiny_batches, gzipped) -> None:
    lines = [json.dumps({"q": str(i)}) for i in range(5)]
    lines[2:2] = ["", "  "]  # blank lines are not rows but count as lines
    lines.append('{"q": ')  # line 8; the 6th row, row 5 counting from 0
    path = tmp_path / ("rows.jsonl.gz" if gzipped else "rows.jsonl")
    text = "\n".join(lines) + "\n"
    if gzipped:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(DataFileError, match=r"rows: cannot read it: line 8 is not valid JSON .*; row 5$"):
        read_rows(str(path), "jsonl", "rows", str(tmp_path))


def test_a_csv_line_that_is_not_utf8_is_named_with_its_row_across_batches(tmp_path, tiny_batches) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b'q,a\n1,"a\nmultiline answer"\n2,b\n3,c\n4,\xff\n')
    with pytest.raises(DataFileError, match=r"line 6 is not valid UTF-8 .*; row 3$"):
        read_rows(str(path), "csv", "rows.csv", str(tmp_path))
    path.write_bytes(b'\xef\xbb\xbfq,a\n1,"a\nmultiline answer"\n2,b\n3,c\n4,"42"\n')
    dataset = read_rows(str(path), "csv", "rows.csv", str(tmp_path))
    assert dataset[:] == {"q": ["1", "2", "3", "4"], "a": ["a\nmultiline answer", "b", "c", "42"]}


@pytest.mark.parametrize(
    "text", ['\ufeff \n [{"a": 1}, {"a": "x"}, {"b": [2]}]', '\ufeff{"a": 1}\n{"a": "x"}\n{"b": [2]}']
)
def test_a_json_file_as_a_list_or_as_lines_after_a_bom(tmp_path, tiny_batches, text) -> None:
    path = tmp_path / "rows.json"
    path.write_text(text, encoding="utf-8")
    dataset = read_rows(str(path), "json", "rows.json", str(tmp_path))
    assert dataset[:] == {"a": [1, "x", None], "b": [None, None, [2]]}


def peak_python_memory(path: str, cache: str) -> int:
    tracemalloc.start()
    try:
        read_rows(path, "jsonl", "rows.jsonl", cache)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_holds_a_batch_not_the_file(tmp_path, monkeypatch) -> None:
    """Peak Python memory while reading 4x the rows stays that of one batch (it was the whole file's rows)."""
    monkeypatch.setattr(row_store, "BATCH_ROWS", 200)
    row = {
        "messages": [{"role": "user", "content": "hi " * 30}, {"role": "assistant", "content": "ho " * 60}]
    }
    peaks = []
    for count in (1000, 4000):
        path = write_lines(tmp_path / f"rows-{count}.jsonl", [json.dumps(row)] * count)
        peaks.append(peak_python_memory(path, str(tmp_path / f"cache-{count}")))
    assert peaks[1] < 1.5 * peaks[0], peaks


@pytest.fixture
def parallel(monkeypatch) -> None:
    """Two worker processes for any jsonl file, each range crossing several batches."""
    monkeypatch.setattr(readers, "PARALLEL_BYTES", 1)
    monkeypatch.setattr(readers, "usable_cores", lambda: 2)
    monkeypatch.setattr(row_store, "BATCH_ROWS", 2)


def test_two_processes_read_the_rows_one_reads(tmp_path, parallel) -> None:
    lines = [json.dumps({"q": str(i)} if i % 3 else {"q": i, f"late{i}": [i]}) for i in range(13)]
    lines[5:5] = ["", "   "]
    dataset = read_rows(write_lines(tmp_path / "rows.jsonl", lines), "jsonl", "rows.jsonl", str(tmp_path))
    assert dataset[:] == expected(lines)
    assert list(dataset.column_names) == list(expected(lines))


@pytest.mark.parametrize("bad", [3, 12])  # in the first half of the file, and in the second
def test_two_processes_name_the_first_bad_line_and_its_row_in_the_file(tmp_path, parallel, bad) -> None:
    lines = [json.dumps({"q": str(i)}) for i in range(14)]
    lines[1:1] = [""]  # a blank line: rows and lines differ by one after it
    lines[bad] = "[1]"
    lines[13] = '{"q": '  # a later bad line is never the one named
    path = write_lines(tmp_path / "rows.jsonl", lines)
    row = bad - 1  # the blank line is not a row
    with pytest.raises(
        DataFileError, match=rf"rows: cannot read it: line {bad + 1} is a JSON array.*; row {row}$"
    ):
        read_rows(path, "jsonl", "rows", str(tmp_path))
