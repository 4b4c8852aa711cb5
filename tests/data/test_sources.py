"""Reading one data source: every file type, local dataset directories, globs, and errors naming the file."""

from __future__ import annotations

import csv
import gzip
import json
import re

import pytest

from lit_sft.data.sources import expand_specs, load_source
from lit_sft.errors import DataFileError
from tests.helpers import write_jsonl, write_parquet

ROWS = [{"question": f"What is {i} plus 1?", "answer": f"#### {i + 1}"} for i in range(4)]


def write_csv(path: str, rows: list[dict[str, str]]) -> str:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl_gz(path: str, rows: list[dict[str, str]]) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return path


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("rows.jsonl", write_jsonl),
        ("rows.jsonl.gz", write_jsonl_gz),
        ("rows.parquet", write_parquet),
        ("rows.csv", write_csv),
    ],
)
def test_every_file_type_reads_back_the_rows_written(tmp_path, name: str, write) -> None:
    path = write(str(tmp_path / name), ROWS)
    source = load_source(path, cache_dir=str(tmp_path / "cache"))
    assert source.name == path
    assert source.dataset.to_list() == ROWS


def test_a_local_dataset_directory_reads_the_split_asked_for(tmp_path) -> None:
    write_jsonl(str(tmp_path / "my_dataset" / "train.jsonl"), ROWS[:3])
    write_jsonl(str(tmp_path / "my_dataset" / "test.jsonl"), ROWS[3:])
    directory = str(tmp_path / "my_dataset")
    assert load_source(directory).dataset.to_list() == ROWS[:3]
    assert load_source(directory, default_split="test").dataset.to_list() == ROWS[3:]


def test_globs_expand_sorted_and_other_specs_stay_in_order(tmp_path) -> None:
    for name in ("b.jsonl", "a.jsonl", "c.parquet"):
        (tmp_path / name).write_text("{}\n")
    pattern = str(tmp_path / "*.jsonl")
    assert expand_specs(["openai/gsm8k:test", pattern, "x.parquet"]) == [
        "openai/gsm8k:test",
        str(tmp_path / "a.jsonl"),
        str(tmp_path / "b.jsonl"),
        "x.parquet",
    ]
    assert expand_specs("one.jsonl") == ["one.jsonl"] and expand_specs(None) == []
    with pytest.raises(DataFileError, match=re.escape(f"no file matches '{tmp_path}/*.missing'")):
        expand_specs(str(tmp_path / "*.missing"))


def test_unreadable_files_are_named_with_the_line_at_fault(tmp_path) -> None:
    broken = write_jsonl(str(tmp_path / "broken.jsonl"), [json.dumps(ROWS[0]), '{"question": "q", '])
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"question": "caf\xe9", "answer": "a"}\n'.encode("latin-1"))
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "rows.txt").write_text("hello\n")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    expected = {
        broken: "broken.jsonl: cannot read it: line 2 is not valid JSON",
        str(latin): "latin.jsonl: cannot read it: line 1 is not valid UTF-8",
        str(tmp_path / "empty.jsonl"): "empty.jsonl: the file is empty",
        str(tmp_path / "rows.txt"): "rows.txt: unknown file type",
        str(tmp_path / "corrupt.parquet"): "corrupt.parquet: cannot read it",
        str(tmp_path / "nope.jsonl"): "nope.jsonl: no such file",
    }
    for path, message in expected.items():
        with pytest.raises(DataFileError, match=re.escape(message)):
            load_source(path, cache_dir=str(tmp_path / "cache"))
