from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import pytest

from lit_sft.data import SFTDataModule
from lit_sft.data.sources import load_source
from lit_sft.errors import ConfigError, DataFileError, RowError
from tests.helpers import arithmetic_rows, write_jsonl, write_parquet


def make_data(tmp_path, rows, name="train.jsonl") -> str:
    path = str(tmp_path / name)
    return write_parquet(path, rows) if name.endswith(".parquet") else write_jsonl(path, rows)


def datamodule(train_files, tokenizer="builtin:byte-chatml", **kwargs) -> SFTDataModule:
    kwargs.setdefault("prompt_key", "question")
    kwargs.setdefault("response_key", "answer")
    return SFTDataModule(train_files=train_files, tokenizer_name_or_path=tokenizer, **kwargs)


def decode_trained(tokenizer, labels) -> str:
    return tokenizer.decode([int(x) for x in labels if x != -100])


def test_jsonl_prompt_response_end_to_end(tmp_path, caplog) -> None:
    rows = arithmetic_rows(20)
    dm = datamodule(make_data(tmp_path, rows), batch_size=4, shuffle=False)
    with caplog.at_level(logging.INFO, logger="lit_sft"):
        dm.setup("fit")
    summary = dm.summaries["train"]
    assert (summary.rows_read, summary.kept, summary.dropped, summary.truncated) == (20, 20, {}, 0)
    assert summary.trained_tokens == sum(len((r["answer"]).encode()) + 1 for r in rows)  # + <|im_end|>
    assert "train: 20 rows read, 20 kept, 0 dropped, 0 truncated" in caplog.text
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4
    for row in range(4):
        assert decode_trained(dm.tokenizer, batch["labels"][row]) == rows[row]["answer"] + "<|im_end|>"
    # Right padding: the attention mask is a prefix of ones, and labels are -100 wherever it is 0.
    mask = batch["attention_mask"]
    assert (mask.cumsum(1).max(1).values == mask.sum(1)).all()
    assert (batch["labels"][mask == 0] == -100).all()


def test_pad_equal_to_eos_keeps_the_trained_eos(tmp_path, tokenizer_dir) -> None:
    """Padding is masked by position: a pad id equal to EOS must not hide the trained EOS."""
    rows = [
        {"question": "q", "answer": "a"},
        {"question": "longer question", "answer": "a much longer answer"},
    ]
    dm = datamodule(make_data(tmp_path, rows), tokenizer=tokenizer_dir("llama3"), batch_size=2, shuffle=False)
    dm.setup("fit")
    assert dm.tokenizer.pad_token_id == dm.tokenizer.eos_token_id
    batch = next(iter(dm.train_dataloader()))
    eos = dm.tokenizer.eos_token_id
    short = batch["labels"][0]
    length = int(batch["attention_mask"][0].sum())
    assert short[length - 1] == eos  # the trained end-of-turn of the short row
    assert (batch["input_ids"][0, length:] == eos).all() and (short[length:] == -100).all()


def test_parquet_with_nested_keys_and_a_message_list_prompt(tmp_path) -> None:
    """The shape of verl's GSM8K SFT parquet."""
    rows = [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": f"What is {i}+1?"}],
            "extra_info": {"answer": f"{i}+1 = {i + 1}\n#### {i + 1}", "index": i},
        }
        for i in range(6)
    ]
    dm = datamodule(
        make_data(tmp_path, rows, "train.parquet"), prompt_key="prompt", response_key="extra_info.answer"
    )
    dm.setup("fit")
    assert dm.summaries["train"].kept == 6
    labels = dm.train_dataset[0]["labels"]
    assert decode_trained(dm.tokenizer, labels) == "0+1 = 1\n#### 1<|im_end|>"


def test_messages_parquet_trains_every_assistant_turn(tmp_path, tokenizer_dir) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "goodbye"},
            ]
        }
    ]
    dm = datamodule(make_data(tmp_path, rows, "chat.parquet"), tokenizer=tokenizer_dir("gemma"))
    dm.setup("fit")
    assert (
        decode_trained(dm.tokenizer, dm.train_dataset[0]["labels"])
        == "hello<end_of_turn>goodbye<end_of_turn>"
    )


def test_a_local_dataset_directory_loads_like_a_hub_dataset(tmp_path) -> None:
    directory = tmp_path / "my_dataset"
    write_jsonl(str(directory / "train.jsonl"), arithmetic_rows(5))
    write_jsonl(str(directory / "test.jsonl"), arithmetic_rows(3, start=100))
    dm = datamodule(str(directory), val_files=f"{directory}", batch_size=2)
    dm.setup("fit")
    assert (dm.summaries["train"].kept, dm.summaries["val"].kept) == (5, 3)


def test_tokenization_is_cached_across_runs(tmp_path) -> None:
    path = make_data(tmp_path, arithmetic_rows(30))
    cache = tmp_path / "cache"

    def cache_files() -> dict[str, int]:  # every Arrow file datasets wrote, with its modification time
        return {str(file): file.stat().st_mtime_ns for file in cache.rglob("*.arrow")}

    datamodule(path, val_ratio=0.2, cache_dir=str(cache)).setup("fit")
    before = cache_files()
    assert before, "the first run wrote no cache"
    second = datamodule(path, val_ratio=0.2, cache_dir=str(cache))
    second.setup("fit")
    assert cache_files() == before, "the second run tokenized again instead of reading the cache"
    assert second.summaries["train"].kept == 24
    # A different tokenization setting is a different cache entry.
    datamodule(path, val_ratio=0.2, max_length=64, truncation="right", cache_dir=str(cache)).setup("fit")
    assert set(cache_files()) > set(before)


def test_val_ratio_split_is_disjoint_and_deterministic_and_max_samples_caps(tmp_path) -> None:
    path = make_data(tmp_path, arithmetic_rows(50))

    def questions(dm, split):
        dataset = dm.train_dataset if split == "train" else dm.val_dataset
        return {dm.tokenizer.decode(row) for row in dataset["input_ids"]}

    first, second = datamodule(path, val_ratio=0.2, seed=3), datamodule(path, val_ratio=0.2, seed=3)
    first.setup("fit")
    second.setup("fit")
    assert len(first.train_dataset) == 40 and len(first.val_dataset) == 10
    assert questions(first, "val") == questions(second, "val")
    assert not questions(first, "val") & questions(first, "train")
    capped = datamodule(path, val_ratio=0.2, seed=3, max_train_samples=7, max_val_samples=2)
    capped.setup("fit")
    assert (len(capped.train_dataset), len(capped.val_dataset)) == (7, 2)


def test_rows_with_no_trained_token_after_truncation_are_dropped_and_counted(tmp_path) -> None:
    rows = [{"question": "q" * 40, "answer": "a"}, {"question": "q", "answer": "a"}]
    dm = datamodule(make_data(tmp_path, rows), max_length=30, truncation="right")
    dm.setup("fit")
    summary = dm.summaries["train"]
    assert (summary.rows_read, summary.kept, summary.dropped) == (2, 1, {"no_trained_tokens": 1})


def test_truncated_rows_are_counted(tmp_path) -> None:
    rows = [{"question": "q", "answer": "a" * 60}, {"question": "q", "answer": "a"}]
    dm = datamodule(make_data(tmp_path, rows), max_length=40, truncation="right")
    dm.setup("fit")
    assert (dm.summaries["train"].kept, dm.summaries["train"].truncated) == (2, 1)
    assert max(dm.train_dataset["num_tokens"]) == 40


def test_truncation_error_names_the_row_and_its_length(tmp_path) -> None:
    rows = [*arithmetic_rows(3), {"question": "q", "answer": "a" * 100}]
    path = make_data(tmp_path, rows)
    with pytest.raises(
        RowError, match=r"row 3, field 'question': the conversation \(max_length=100\) has 1\d\d tokens"
    ):
        datamodule(path, max_length=100, truncation="error").setup("fit")


BAD_ROWS = [
    ({"question": None, "answer": "4"}, "question", "prompt is null"),
    ({"question": "q", "answer": ""}, "answer", "response is empty"),
    ({"question": "q", "answer": 4}, "answer", "response must be a string, got int"),
    # A key missing from a jsonl row reads as null: the file is columnar once loaded.
    ({"question": "q"}, "answer", "response is null"),
    ({"question": {"text": "q"}, "answer": "4"}, "question", "expected a list of messages, got dict"),
]


@pytest.mark.parametrize(("bad_row", "field", "reason"), BAD_ROWS)
def test_bad_rows_name_file_row_and_field(tmp_path, bad_row, field, reason) -> None:
    good = make_data(tmp_path, arithmetic_rows(3), "first.jsonl")
    bad = write_jsonl(str(tmp_path / "second.jsonl"), [*arithmetic_rows(2), bad_row, *arithmetic_rows(2)])
    with pytest.raises(RowError) as error:
        datamodule([good, bad]).setup("fit")
    assert (error.value.file, error.value.row, error.value.field) == (bad, 2, field)
    assert reason in str(error.value) and "skip_invalid_rows" in str(error.value)


def test_bad_messages_rows_name_the_message(tmp_path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
    ]
    path = make_data(tmp_path, rows, "chat.jsonl")
    with pytest.raises(RowError, match=r"chat.jsonl, row 1, field 'messages\[1\].role': unknown role 'bot'"):
        datamodule(path).setup("fit")


def test_skip_invalid_rows_drops_and_counts_by_reason(tmp_path) -> None:
    rows = [
        *arithmetic_rows(4),
        {"question": None, "answer": "4"},
        {"question": "q", "answer": 4},
        {"question": "q"},
    ]
    rows += [{"question": "q" * 300, "answer": "a"}]
    dm = datamodule(make_data(tmp_path, rows), skip_invalid_rows=True, max_length=128)
    dm.setup("fit")
    summary = dm.summaries["train"]
    assert summary.dropped == {"invalid_content": 3, "too_long": 1}
    assert summary.kept + sum(summary.dropped.values()) == summary.rows_read == 8
    assert "4 dropped (invalid_content: 3, too_long: 1)" in summary.line()


def test_a_missing_column_is_named_with_the_columns_the_file_has(tmp_path) -> None:
    path = make_data(tmp_path, [{"q": "a", "answer": "b"}])
    with pytest.raises(
        DataFileError,
        match=r"missing column 'question' for the prompt_response format; it has \['q', 'answer'\]",
    ):
        datamodule(path).setup("fit")


def test_the_start_up_check_and_the_loader_agree_on_what_is_a_local_file(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    local = ["missing.jsonl", os.path.join("data", "missing.parquet"), "./data", "~/no-such-dir/x"]
    hub = ["teknium/OpenHermes-2.5", "openai/gsm8k:test"]  # a dot does not make a path
    dm = SFTDataModule(train_files=[*local, *hub], tokenizer_name_or_path="builtin:byte-chatml")
    assert dm.preflight_problems() == [f"data.train_files: {spec}: no such file" for spec in local]
    for spec in local:  # the loader calls the same specs missing files rather than asking the Hub
        with pytest.raises(DataFileError, match=re.escape(f"{spec}: no such file")):
            load_source(spec)


def test_unreadable_files_are_named(tmp_path) -> None:
    broken = write_jsonl(
        str(tmp_path / "broken.jsonl"), [json.dumps({"question": "q", "answer": "a"}), '{"question": "q", ']
    )
    with pytest.raises(
        DataFileError, match=re.escape("broken.jsonl: cannot read it: line 2 is not valid JSON")
    ):
        datamodule(broken).setup("fit")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataFileError, match=re.escape("corrupt.parquet: cannot read it")):
        datamodule(str(corrupt)).setup("fit")
    with pytest.raises(DataFileError, match=re.escape("nope.jsonl: no such file")):
        datamodule(str(tmp_path / "nope.jsonl")).setup("fit")
    with pytest.raises(DataFileError, match="no file matches"):
        datamodule(str(tmp_path / "*.missing")).setup("fit")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"question": "caf\xe9", "answer": "a"}\n'.encode("latin-1"))
    with pytest.raises(
        DataFileError, match=re.escape("latin.jsonl: cannot read it: line 1 is not valid UTF-8")
    ):
        datamodule(str(latin)).setup("fit")


def test_configuration_mistakes_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="val_ratio"):
        datamodule("x.jsonl", val_ratio=1.5)
    with pytest.raises(ConfigError, match="train_files is not set"):
        SFTDataModule(train_files=[], tokenizer_name_or_path="builtin:byte-chatml").setup("fit")
    with pytest.raises(ConfigError, match="tokenizer_name_or_path is not set"):
        SFTDataModule(train_files=make_data(tmp_path, arithmetic_rows(2)), prompt_key="question").setup("fit")


def test_real_gsm8k_rows(gsm8k_dir) -> None:
    dm = datamodule(os.path.join(gsm8k_dir, "train.jsonl"), max_train_samples=100, max_length=2048)
    dm.setup("fit")
    assert dm.summaries["train"].kept == 100
    lengths = np.asarray(dm.train_dataset["num_tokens"])
    assert lengths.min() > 100  # byte-level: GSM8K rows are a few hundred bytes
    text = decode_trained(dm.tokenizer, dm.train_dataset[0]["labels"])
    assert text.startswith("Natalia sold 48/2") and text.endswith("#### 72<|im_end|>")


@pytest.mark.parametrize("role", [["user"], {"role": "user"}, 7, True])
def test_a_role_of_another_json_type_is_an_unknown_role_named_or_dropped_and_counted(tmp_path, role) -> None:
    """A verl prompt list whose message has ``"role": ["user"]`` once ended in ``TypeError: unhashable type``
    (the role reached a set) even under skip_invalid_rows."""
    rows = [
        *({"prompt": [{"role": "user", "content": f"{i} + 1"}], "answer": f"{i + 1}"} for i in range(3)),
        {"prompt": [{"role": role, "content": "1 + 1"}], "answer": "2"},
    ]
    path = make_data(tmp_path, rows, "verl.jsonl")
    with pytest.raises(RowError, match=r"verl.jsonl, row 3, field 'prompt\[0\].role': unknown role "):
        datamodule(path, prompt_key="prompt", response_key="answer").setup("fit")
    dm = datamodule(path, prompt_key="prompt", response_key="answer", skip_invalid_rows=True)
    dm.setup("fit")
    assert dm.summaries["train"].dropped == {"unknown_role": 1}
    assert dm.summaries["train"].kept == 3
