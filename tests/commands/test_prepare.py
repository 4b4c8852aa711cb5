from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from lit_sft import SFTDataModule
from lit_sft.commands import prepare
from lit_sft.commands.fit import entry_point
from lit_sft.errors import ConfigError
from lit_sft.gsm8k.prepare import GSM8K_INSTRUCTION, gsm8k
from tests.helpers import write_jsonl


def test_prepare_gsm8k_writes_verls_formats(gsm8k_dir, tmp_path, capsys) -> None:
    entry_point(["prepare", "gsm8k", "--source", gsm8k_dir, "--out", str(tmp_path)])
    assert "gsm8k train: 7473 rows" in capsys.readouterr().out
    train = pq.read_table(tmp_path / "train.parquet")
    test = pq.read_table(tmp_path / "test.parquet")
    assert (train.num_rows, test.num_rows) == (7473, 1319)
    row = train.slice(0, 1).to_pylist()[0]
    assert row["data_source"] == "openai/gsm8k" and row["ability"] == "math"
    assert row["prompt"] == [
        {"role": "user", "content": row["extra_info"]["question"] + " " + GSM8K_INSTRUCTION}
    ]
    assert row["reward_model"] == {"style": "rule", "ground_truth": "72"}
    assert row["extra_info"]["ground_truth"] == "72" and row["response"].endswith("#### 72")
    multi = pq.read_table(tmp_path / "multiturn" / "test.parquet").slice(0, 1).to_pylist()[0]
    assert [m["role"] for m in multi["messages"]] == ["user", "assistant"]
    assert multi["messages"][1]["content"].endswith("#### 18")


def test_prepared_gsm8k_trains_on_the_solution(gsm8k_dir, tmp_path) -> None:
    gsm8k(gsm8k_dir, str(tmp_path), splits=["test"])
    for prompt_key, response_key, path in [
        ("prompt", "extra_info.answer", tmp_path / "test.parquet"),
        ("prompt", "response", tmp_path / "test.parquet"),
    ]:
        dm = SFTDataModule(
            train_files=str(path),
            tokenizer_name_or_path="builtin:byte-chatml",
            prompt_key=prompt_key,
            response_key=response_key,
            max_train_samples=3,
            max_length=4096,
        )
        dm.setup("fit")
        labels = [t for t in dm.train_dataset[0]["labels"] if t != -100]
        assert dm.tokenizer.decode(labels).endswith("#### 18<|im_end|>")
    messages = SFTDataModule(
        train_files=str(tmp_path / "multiturn" / "test.parquet"),
        tokenizer_name_or_path="builtin:byte-chatml",
        max_train_samples=3,
        max_length=4096,
    )
    messages.setup("fit")
    assert messages.summaries["train"].kept == 3


SHAREGPT = [
    {
        "system": "You are a calculator.",
        "conversations": [
            {"from": "human", "value": "Add 2 and 3."},
            {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 2, "b": 3}}'},
            {"from": "observation", "value": "5"},
            {"from": "gpt", "value": "The sum is 5."},
        ],
        "tools": json.dumps([{"name": "add", "parameters": {"type": "object"}}]),
    },
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    {"conversations": [{"from": "alien", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{not json"}]},
    {"conversations": [{"from": "human", "value": "hi"}]},
]

OPENAI = [
    {
        "messages": [
            {"role": "developer", "content": "You are a calculator."},
            {"role": "user", "content": "Add 2 and 3."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "5"},
            {"role": "assistant", "content": "The sum is 5."},
        ],
        "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
    },
    {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
]


def test_prepare_chat_from_sharegpt(tmp_path, capsys) -> None:
    source = write_jsonl(str(tmp_path / "sharegpt.jsonl"), SHAREGPT)
    summary = prepare.chat(source, str(tmp_path / "out.jsonl"))
    assert summary == {
        "read": 5,
        "written": 2,
        "dropped": {"unknown_role": 1, "invalid_tool_call": 1, "no_assistant": 1},
    }
    assert "chat (sharegpt): 5 rows read, 2 written" in capsys.readouterr().out
    with open(tmp_path / "out.jsonl", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert first["messages"][2]["tool_calls"] == [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    ]
    assert json.loads(first["tools"]) == [
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    ]
    with pytest.raises(ConfigError, match=r"row 2, field 'conversations\[0\].from': unknown speaker 'alien'"):
        prepare.chat(source, str(tmp_path / "strict.jsonl"), skip_invalid_rows=False)


def test_prepared_openai_chat_in_parquet_trains_tool_calls_but_not_tool_results(
    tmp_path, tokenizer_dir
) -> None:
    source = write_jsonl(str(tmp_path / "openai.jsonl"), OPENAI)
    out = str(tmp_path / "chat.parquet")
    assert prepare.chat(source, out)["dropped"] == {"invalid_content": 1}
    dm = SFTDataModule(train_files=out, tokenizer_name_or_path=tokenizer_dir("qwen"))
    dm.setup("fit")
    [row] = dm.train_dataset
    text = dm.tokenizer.decode(row["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are a calculator.\n\n# Tools")
    assert "<tool_response>\n5\n</tool_response>" in text
    trained = dm.tokenizer.decode([t for t in row["labels"] if t != -100])
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>'
    assert trained == call + "The sum is 5.<|im_end|>"
