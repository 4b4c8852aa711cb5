"""Reading text files as written (lit_sft.data.readers) and struct nulls in parquet (issue 15)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lit_sft.data import SFTDataModule
from lit_sft.data.readers import MAX_DEPTH, read_rows
from lit_sft.errors import DataFileError, RowError
from tests.helpers import make_tokenizer, write_jsonl

TOKENIZER = make_tokenizer("qwen")


def setup(train_files: str, **kwargs) -> SFTDataModule:
    dm = SFTDataModule(train_files=train_files, tokenizer_name_or_path="unused", max_length=None, **kwargs)
    dm._tokenizer = TOKENIZER
    dm.setup("fit")
    return dm


def texts(dm: SFTDataModule) -> list[str]:
    return [TOKENIZER.decode(row["input_ids"]) for row in dm.train_dataset]


def test_strings_stay_strings_next_to_a_number_in_another_row(tmp_path) -> None:
    rows = [
        {"question": "a", "answer": "42"},
        {"question": "b", "answer": 5},
        {"question": "c", "answer": '"yes"'},
    ]
    path = write_jsonl(str(tmp_path / "mixed.jsonl"), rows)
    with pytest.raises(RowError) as error:  # strict: the error names the row that is wrong, not a valid one
        setup(path, prompt_key="question", response_key="answer")
    assert (error.value.row, error.value.field) == (1, "answer")
    dm = setup(path, prompt_key="question", response_key="answer", skip_invalid_rows=True)
    rendered = texts(dm)
    assert "assistant\n42<|im_end|>" in rendered[0]  # not 42 decoded, and
    assert 'assistant\n"yes"<|im_end|>' in rendered[1]  # its quotes kept
    assert dm.summaries["train"].dropped == {"invalid_content": 1}


def test_read_rows_keeps_types_and_nulls_as_written_and_reads_once(tmp_path) -> None:
    path = str(tmp_path / "rows.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('\ufeff{"a": "1", "b": {"x": null}}\r\n\n{"a": 2, "b": {"y": [1.5, true]}}\n')
    cache = str(tmp_path / "cache")
    dataset = read_rows(path, "jsonl", "rows.jsonl", cache)
    assert dataset[:] == {"a": ["1", 2], "b": [{"x": None}, {"y": [1.5, True]}]}
    assert read_rows(path, "jsonl", "rows.jsonl", cache).cache_files == dataset.cache_files  # cached
    with open(path, "a", encoding="utf-8") as handle:  # a changed file is read again
        handle.write('{"a": "3"}\n')
    assert read_rows(path, "jsonl", "rows.jsonl", cache)["a"] == ["1", 2, "3"]


def test_an_unused_column_nested_90_deep_is_read_and_deeper_than_the_bound_is_named(tmp_path) -> None:
    row = {"question": "q", "answer": "a", "deep": json.loads("[" * 90 + "]" * 90)}
    dm = setup(write_jsonl(str(tmp_path / "deep.jsonl"), [row]), prompt_key="question", response_key="answer")
    assert dm.summaries["train"].kept == 1
    deeper = str(tmp_path / "deeper.jsonl")
    with open(deeper, "w") as handle:
        handle.write('{"q": "a"}\n{"q": ' + "{" * 2 + '"a": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}}}\n")
    with pytest.raises(DataFileError, match=f"line 2 is nested more than {MAX_DEPTH} levels deep; row 1"):
        read_rows(deeper, "jsonl", "deeper.jsonl", str(tmp_path / "cache"))


def test_rows_with_more_brackets_than_the_depth_bound_are_parsed_together_and_the_bound_is_exact(
    tmp_path, monkeypatch
) -> None:
    from lit_sft.data import readers

    schema = {
        "type": "function",
        "function": {"name": "f", "parameters": {"properties": {"x": {"enum": [1]}}}},
    }
    rows = [{"tools": [schema] * 60, "n": i} for i in range(3)]  # 360 brackets a row, 6 levels deep
    rows.append({"at_the_bound": json.loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))})
    path = write_jsonl(str(tmp_path / "tools.jsonl"), rows)

    def line_by_line(*args, **kwargs):
        raise AssertionError("a row of many brackets but few levels was parsed line by line")

    monkeypatch.setattr(readers, "_parse", line_by_line)  # the slow path, which scans each line's text
    dataset = read_rows(path, "jsonl", "tools.jsonl", str(tmp_path / "cache"))
    assert [row["tools"] for row in dataset][:3] == [row["tools"] for row in rows[:3]]
    assert dataset[3]["at_the_bound"] == rows[3]["at_the_bound"]
    monkeypatch.undo()
    over = str(tmp_path / "over.jsonl")
    with open(over, "w") as handle:  # one level more, among rows of many brackets
        handle.write(json.dumps(rows[0]) + "\n" + '{"a": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}\n")
    with pytest.raises(DataFileError, match=f"line 2 is nested more than {MAX_DEPTH} levels deep; row 1"):
        read_rows(over, "jsonl", "over.jsonl", str(tmp_path / "cache"))


def test_a_dataset_directory_names_each_file_and_its_own_row(tmp_path) -> None:
    os.makedirs(tmp_path / "data")
    good = [{"question": "q", "answer": "a"}] * 3
    write_jsonl(str(tmp_path / "data" / "train-0.jsonl"), good)
    write_jsonl(str(tmp_path / "data" / "train-1.jsonl"), [*good[:2], {"question": "q", "answer": None}])
    with pytest.raises(RowError) as error:
        setup(str(tmp_path / "data"), prompt_key="question", response_key="answer")
    assert (os.path.basename(error.value.file), error.value.row) == ("train-1.jsonl", 2)


TOOL_CALL_ROWS = [
    {
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
            },
            {"role": "tool", "content": "3"},
            {"role": "assistant", "content": "3"},
        ],
        "tools": [{"type": "function", "function": {"name": name, "description": description}}],
    }
    for name, arguments, description in [("add", {"a": 1}, "adds"), ("mul", {"x": "2"}, None)]
]


def without_nulls(value: object) -> object:
    """``value`` with every null dict entry left out (Arrow adds one for each struct field a row lacks)."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def test_parquet_structs_add_nulls_that_are_never_rendered(tmp_path) -> None:
    rows = json.loads(json.dumps(TOOL_CALL_ROWS))
    del rows[1]["tools"][0]["function"]["description"]
    path = str(tmp_path / "tools.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    stored = pq.read_table(path).to_pylist()
    assert stored[1]["tools"][0]["function"]["description"] is None  # Arrow added it
    assert without_nulls(stored) == rows
    rendered = texts(setup(path))
    # The order of a struct's fields is Arrow's (pyarrow <= 23 sorts them, 24+ keeps the order written) and
    # `tojson` writes keys in that order: the reference renders the rows as the file holds them, nulls left out.
    expected = [
        TOKENIZER.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
        for row in without_nulls(stored)
    ]
    assert rendered == expected and "null" not in "".join(rendered)


def test_nulls_written_in_jsonl_are_kept(tmp_path) -> None:
    rows = json.loads(json.dumps(TOOL_CALL_ROWS))  # the second row's description is an explicit null
    rendered = texts(setup(write_jsonl(str(tmp_path / "tools.jsonl"), rows)))
    assert '"description": null' in rendered[1]
    assert rendered[1] == TOKENIZER.apply_chat_template(
        rows[1]["messages"], tools=rows[1]["tools"], tokenize=False
    )
