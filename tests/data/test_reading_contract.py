"""The bad-input contract of the whole data path, checked on random inputs (issue 15).

Random valid rows (GSM8K, verl-style nested rows with a prompt list, chat rows with tool calls and tools)
get random mutations at every level (a field's type, a missing key, a role, a weight, tool-call arguments
and names, a prompt list holding a tool message, a broken or non-object line) and random framings (jsonl
with blank lines, a BOM and CRLF line ends, gzip, a ``.json`` list, parquet, csv, a directory of files).
Each input is read by `SFTDataModule.setup` in both modes, and must:

* train exactly the conversations a correct reader would: the rendered text of every kept row equals
  ``apply_chat_template`` on the original row, and its trained text is the assistant turns' own text;
* or, strict, raise one `RowError` naming the file, the row (within that file, from 0) and the field of
  the first mutated row (a line that is not a row: a `DataFileError` naming the file and its line; a
  column that no row of a file has: a `DataFileError` naming the file and the column, in both modes);
* and, with ``skip_invalid_rows``, drop and count exactly the mutated rows, keeping every other one in
  order (kept + dropped = read).

The expectations come from the mutation itself (which field it broke, or that it broke nothing), never from
lit_sft's code. Seeded and bounded here; ``benchmarks/reading_contract.py`` runs many more examples.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_sft.data import SFTDataModule
from lit_sft.errors import ConfigError, DataFileError, RowError
from tests.helpers import make_tokenizer

TOKENIZER = make_tokenizer("qwen")
#: Strings that a type-guessing reader would turn into numbers, nulls, lists or unquoted strings.
JSON_LOOKING = ["42", '"yes"', "null", "true", "[1, 2]", '{"a": 1}', "1e5", "-0", " 7 ", "NaN"]
TEXT = st.one_of(
    st.sampled_from(JSON_LOOKING),
    st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="<|\\"),
        min_size=1,
        max_size=12,
    ).filter(lambda text: text.strip() != ""),
)
TOOLS = [
    {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "required": ["a"]}}},
    {
        "type": "function",
        "function": {"name": "mul", "description": "x times y", "parameters": {"type": "object"}},
    },
]
ROW_KINDS = ("gsm8k", "verl", "chat")
OPTIONS = {
    "gsm8k": {"prompt_key": "question", "response_key": "answer"},
    "verl": {"prompt_key": "prompt", "response_key": "extra_info.answer"},
    "chat": {},
}


@st.composite
def valid_rows(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    if kind == "gsm8k":
        return {"question": draw(TEXT), "answer": draw(TEXT)}
    if kind == "verl":
        return {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": draw(TEXT)}],
            "reward_model": {"style": "rule", "ground_truth": draw(TEXT)},
            "extra_info": {"split": "train", "index": draw(st.integers(0, 10**6)), "answer": draw(TEXT)},
        }
    name = draw(st.sampled_from(["add", "mul"]))
    arguments = draw(st.dictionaries(st.sampled_from(["a", "b", "x"]), st.integers(-5, 5) | TEXT, max_size=2))
    if draw(st.booleans()):
        arguments = json.dumps(arguments)  # OpenAI's own form: a JSON string
    messages = [
        {"role": "user", "content": draw(TEXT)},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "content": draw(TEXT)},
        {"role": "assistant", "content": draw(TEXT)},
    ]
    if draw(st.booleans()):
        messages += [
            {"role": "user", "content": draw(TEXT)},
            {"role": "assistant", "content": draw(TEXT), "weight": draw(st.sampled_from([0, 1]))},
        ]
    tools = TOOLS if draw(st.booleans()) else json.dumps(TOOLS)
    return {"messages": messages, "tools": tools}


#: (row kind, mutation) -> the field it breaks (None: it breaks nothing; the row must train unchanged).
BREAKING = {
    "gsm8k": {
        "answer_int": "answer",
        "answer_big_int": "answer",
        "answer_list": "answer",
        "answer_null": "answer",
        "answer_missing": "answer",
        "answer_bool": "answer",
        "question_int": "question",
        "question_empty": "question",
    },
    "verl": {
        "response_int": "extra_info.answer",
        "response_dict": "extra_info.answer",
        "prompt_tool_message": "prompt[1]",
        "prompt_role": "prompt[0].role",
        "prompt_content_int": "prompt[0].content",
    },
    "chat": {
        "role": "messages[0].role",
        "content_int": "messages[2].content",
        "weight_string_zero": "messages[3].weight",
        "weight_no": "messages[3].weight",
        "weight_two": "messages[3].weight",
        "arguments_list": "messages[1].tool_calls[0].function.arguments",
        "arguments_number": "messages[1].tool_calls[0].function.arguments",
        "arguments_json_list": "messages[1].tool_calls[0].function.arguments",
        "arguments_bool": "messages[1].tool_calls[0].function.arguments",
        "name_missing": "messages[1].tool_calls[0].function.name",
        "name_object": "messages[1].tool_calls[0].function.name",
        "name_list": "messages[1].tool_calls[0].function.name",
        "tools_broken": "tools",
        "tool_name_list": "tools[0]",
    },
}
#: Roles no template knows, of every JSON type: a list or an object must not reach a set or a dict key.
ROLES = st.sampled_from(["bot", ["user"], {"role": "user"}, 7, 1.5, True, ""])
HARMLESS = ["json_looking_text", "unused_deep_column", "unused_mixed_column", "unused_null_column"]


def mutate(row: dict[str, Any], kind: str, mutation: str, draw: st.DrawFn) -> dict[str, Any]:
    row = copy.deepcopy(row)
    if mutation == "json_looking_text":
        text = draw(st.sampled_from(JSON_LOOKING))
        if kind == "gsm8k":
            row["answer"] = text
        elif kind == "verl":
            row["extra_info"]["answer"] = text
        else:
            row["messages"][3]["content"] = text
    elif mutation == "unused_deep_column":
        depth = draw(st.integers(1, 90))
        value: Any = "leaf"
        for _ in range(depth):
            value = [value]
        row["deep"] = value
    elif mutation == "unused_mixed_column":
        row["extra"] = draw(st.sampled_from([5, "5", [5], {"five": 5}, True]))
    elif mutation == "unused_null_column":
        row["nothing"] = None
    elif kind == "gsm8k":
        values = {
            "answer_int": 5,
            "answer_big_int": 10**29,
            "answer_list": ["a"],
            "answer_null": None,
            "answer_bool": True,
        }
        if mutation in values:
            row["answer"] = values[mutation]
        elif mutation == "answer_missing":
            del row["answer"]
        else:
            row["question"] = {"question_int": 7, "question_empty": " "}[mutation]
    elif kind == "verl":
        if mutation == "response_int":
            row["extra_info"]["answer"] = 3
        elif mutation == "response_dict":
            row["extra_info"]["answer"] = {"text": "a"}
        elif mutation == "prompt_tool_message":
            row["prompt"].append({"role": "tool", "content": "3"})
        elif mutation == "prompt_role":
            row["prompt"][0]["role"] = draw(ROLES)
        else:
            row["prompt"][0]["content"] = 4
    else:
        function = row["messages"][1]["tool_calls"][0]["function"]
        if mutation == "role":
            row["messages"][0]["role"] = draw(ROLES)
        elif mutation == "content_int":
            row["messages"][2]["content"] = 3
        elif mutation.startswith("weight"):
            row["messages"][3]["weight"] = {"weight_string_zero": "0", "weight_no": "no", "weight_two": 2}[
                mutation
            ]
        elif mutation.startswith("arguments"):
            values = {
                "arguments_list": [1, 2],
                "arguments_number": 3,
                "arguments_json_list": "[1, 2]",
                "arguments_bool": True,
            }
            function["arguments"] = values[mutation]
        elif mutation == "name_missing":
            del function["name"]
        elif mutation == "name_object":
            function["name"] = {"name": "add"}
        elif mutation == "name_list":
            function["name"] = ["add"]
        elif mutation == "tool_name_list":
            tools = copy.deepcopy(TOOLS)
            tools[0]["function"]["name"] = [tools[0]["function"]["name"]]
            row["tools"] = tools if draw(st.booleans()) else json.dumps(tools)
        else:
            row["tools"] = "{broken"
    return row


#: Mutations that put a value of another JSON type where a string is used as a name (a role, a tool name).
FOREIGN_TYPES = {"verl": ["prompt_role"], "chat": ["role", "name_object", "name_list", "tool_name_list"]}


@dataclass
class Case:
    kind: str
    rows: list[dict[str, Any]]
    broken: dict[int, str] = field(default_factory=dict)  # row -> field it breaks
    framing: str = "jsonl"
    split_at: int | None = None  # directory framing: rows before this go to the first file
    bad_line: str | None = None  # a line that is not a row, inserted before `bad_line_at`
    bad_line_at: int = 0
    blank_lines: list[int] = field(default_factory=list)
    bom: bool = False
    crlf: bool = False


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(ROW_KINDS))
    count = draw(st.integers(1, 6))
    rows = [draw(valid_rows(kind)) for _ in range(count)]
    case = Case(kind, rows)
    for index in draw(st.lists(st.integers(0, count - 1), max_size=3, unique=True)):
        mutation = draw(st.sampled_from([*BREAKING[kind], *HARMLESS]))
        rows[index] = mutate(rows[index], kind, mutation, draw)
        if mutation in BREAKING[kind]:
            case.broken[index] = BREAKING[kind][mutation]
    add_framing(case, draw)
    return case


@st.composite
def foreign_type_cases(draw: st.DrawFn) -> Case:
    """One row with a role or tool name of another JSON type (a list is unhashable: it once reached a set)."""
    kind = draw(st.sampled_from(sorted(FOREIGN_TYPES)))
    count = draw(st.integers(1, 4))
    rows = [draw(valid_rows(kind)) for _ in range(count)]
    case, index = Case(kind, rows), draw(st.integers(0, count - 1))
    mutation = draw(st.sampled_from(FOREIGN_TYPES[kind]))
    rows[index] = mutate(rows[index], kind, mutation, draw)
    case.broken[index] = BREAKING[kind][mutation]
    add_framing(case, draw)
    return case


def add_framing(case: Case, draw: st.DrawFn) -> None:
    count = len(case.rows)
    framings = ["jsonl", "jsonl", "jsonl.gz", "json", "parquet", "directory"]
    if case.kind == "gsm8k":
        framings.append("csv")
    case.framing = draw(st.sampled_from(framings))
    if case.framing == "directory":
        case.split_at = draw(st.integers(0, count))
    if case.framing in ("jsonl", "directory"):
        case.blank_lines = draw(st.lists(st.integers(0, count), max_size=2))
        case.bom, case.crlf = draw(st.booleans()), draw(st.booleans())
        if draw(st.integers(0, 9)) == 0:
            case.bad_line = draw(st.sampled_from(['{"question": ', "[1, 2]", '"a row?"', "7"]))
            case.bad_line_at = draw(st.integers(0, count))


def write_jsonl(path: str, rows: list[dict[str, Any]], case: Case, first_row: int) -> int | None:
    """Write ``rows``; returns the 1-based line of the case's bad line when it lands in this file."""
    lines, bad_line = [], None
    for index, row in enumerate([*rows, None]):
        if first_row + index in case.blank_lines:
            lines.append("")
        if case.bad_line is not None and first_row + index == case.bad_line_at:
            lines.append(case.bad_line)
            bad_line = len(lines)
        if row is not None:
            lines.append(json.dumps(row, ensure_ascii=False))
    newline = "\r\n" if case.crlf else "\n"
    with open(path, "wb") as handle:
        handle.write(
            (b"\xef\xbb\xbf" if case.bom else b"") + newline.join(lines).encode("utf-8") + newline.encode()
        )
    return bad_line


def write_case(directory: str, case: Case) -> tuple[str, list[tuple[str, int, int]], tuple[str, int] | None]:
    """Write the case; returns the path to read, (file name, first row, row count) per file, and where the
    bad line is (file name, line) if any. Falls back to jsonl where the framing cannot hold the rows."""
    rows = case.rows
    if case.framing == "directory":
        root = os.path.join(directory, "data")
        os.makedirs(root)
        files, bad = [], None
        for name, first, part in (
            ("train-0.jsonl", 0, rows[: case.split_at]),
            ("train-1.jsonl", case.split_at, rows[case.split_at :]),
        ):
            if not part and not (case.bad_line is not None and case.bad_line_at == first):
                continue
            line = write_jsonl(os.path.join(root, name), part, case, first)
            if line is not None and bad is None:
                bad = (name, line)
                case.bad_line = None  # once
            files.append((name, first, len(part)))
        return root, files, bad
    path = os.path.join(directory, f"rows.{case.framing}")
    if case.framing == "parquet":
        try:
            pq.write_table(pa.Table.from_pylist(rows), path)
            return path, [("rows.parquet", 0, len(rows))], None
        except (pa.ArrowException, OverflowError, TypeError):
            case.framing, path = "jsonl", os.path.join(directory, "rows.jsonl")
    if case.framing == "csv":
        if all(isinstance(value, str) for row in rows for value in row.values()) and all(
            set(row) == {"question", "answer"} for row in rows
        ):
            pa_csv.write_csv(pa.Table.from_pylist(rows), path)
            return path, [("rows.csv", 0, len(rows))], None
        case.framing, path = "jsonl", os.path.join(directory, "rows.jsonl")
    if case.framing == "json":
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, ensure_ascii=False, indent=1)
        return path, [("rows.json", 0, len(rows))], None
    if case.framing == "jsonl.gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return path, [("rows.jsonl.gz", 0, len(rows))], None
    line = write_jsonl(path, rows, case, 0)
    return path, [("rows.jsonl", 0, len(rows))], None if line is None else ("rows.jsonl", line)


def reference(row: dict[str, Any], kind: str) -> tuple[str, list[str]]:
    """What a correct reader trains on ``row``: its rendered text and its trained assistant texts."""
    tools = None
    if kind == "gsm8k":
        messages = [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["answer"]},
        ]
    elif kind == "verl":
        messages = [*row["prompt"], {"role": "assistant", "content": row["extra_info"]["answer"]}]
    else:
        messages = copy.deepcopy(row["messages"])
        for message in messages:
            for call in message.get("tool_calls", []):
                if isinstance(call["function"]["arguments"], str):
                    call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        tools = row["tools"] if isinstance(row["tools"], list) else json.loads(row["tools"])
    text = TOKENIZER.apply_chat_template(messages, tools=tools, tokenize=False)
    trained = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant" and message.get("weight", 1) != 0:
            before = TOKENIZER.apply_chat_template(
                messages[:index], tools=tools, tokenize=False, add_generation_prompt=True
            )
            upto = TOKENIZER.apply_chat_template(messages[: index + 1], tools=tools, tokenize=False)
            assert upto.startswith(before)
            trained.append(upto[len(before) :].rstrip("\n"))
    return text, trained


def read(path: str, case: Case, skip: bool, cache_dir: str) -> SFTDataModule:
    dm = SFTDataModule(
        train_files=path, tokenizer_name_or_path="unused", max_length=None, skip_invalid_rows=skip,
        cache_dir=cache_dir, **OPTIONS[case.kind],
    )  # fmt: skip
    dm._tokenizer = TOKENIZER
    dm.setup("fit")
    return dm


def check_contract(case: Case) -> None:
    """Read ``case`` in both modes and assert the contract (see the module docstring)."""
    with tempfile.TemporaryDirectory() as directory:
        cache_dir = os.path.join(directory, "cache")
        path, files, bad_line = write_case(directory, case)
        if bad_line is not None:  # a line that is no row: the file cannot be read, in either mode
            for skip in (False, True):
                with pytest.raises(DataFileError) as error:
                    read(path, case, skip, cache_dir)
                assert bad_line[0] in str(error.value) and f"line {bad_line[1]} " in str(error.value), str(
                    error.value
                )
                assert "\n" not in str(error.value)
            return
        without_column = [
            name
            for name, start, count in files
            if count and all("answer" not in row for row in case.rows[start : start + count])
        ]
        if (
            case.kind == "gsm8k" and without_column
        ):  # no row has the column: the file lacks it, in either mode
            for skip in (False, True):
                with pytest.raises(DataFileError) as error:
                    read(path, case, skip, cache_dir)
                assert without_column[0] in str(error.value) and "missing column 'answer'" in str(error.value)
            return
        good = [index for index in range(len(case.rows)) if index not in case.broken]
        if case.broken:
            first = min(case.broken)
            name, start, _ = next(file for file in files if file[1] <= first < file[1] + file[2])
            with pytest.raises(RowError) as error:
                read(path, case, False, cache_dir)
            assert (error.value.file.endswith(name), error.value.row, error.value.field) == (
                True,
                first - start,
                case.broken[first],
            ), str(error.value)
            assert "\n" not in str(error.value)
        else:
            check_trained(read(path, case, False, cache_dir), case, good)
        try:
            dm = read(path, case, True, cache_dir)
        except ConfigError as error:  # every row was bad
            assert not good and "no training rows left" in str(error)
            return
        summary = dm.summaries["train"]
        assert (summary.rows_read, summary.kept, sum(summary.dropped.values())) == (
            len(case.rows),
            len(good),
            len(case.broken),
        )
        check_trained(dm, case, good)


def check_trained(dm: SFTDataModule, case: Case, good: list[int]) -> None:
    dataset = dm.train_dataset
    assert len(dataset) == len(good)
    for position, index in enumerate(good):
        row = dataset[position]
        text, trained = reference(case.rows[index], case.kind)
        assert TOKENIZER.decode(row["input_ids"]) == text
        labels = TOKENIZER.decode([token for token in row["labels"] if token != -100])
        assert labels == "".join(trained), (labels, trained)


@pytest.fixture(autouse=True, scope="module")
def _quiet() -> Any:
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


@settings(
    max_examples=30, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(cases())
def test_every_input_trains_as_written_or_names_its_first_bad_row(case: Case) -> None:
    check_contract(case)


@settings(
    max_examples=15, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(foreign_type_cases())
def test_a_role_or_name_of_another_json_type_is_named_or_dropped_never_a_traceback(case: Case) -> None:
    check_contract(case)
