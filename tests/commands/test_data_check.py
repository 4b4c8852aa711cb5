from __future__ import annotations

import json

import yaml

from lit_sft.commands.fit import entry_point
from tests.helpers import arithmetic_rows, write_jsonl


def write_config(tmp_path, train_file: str, **data) -> str:
    config = {
        "model": {
            "class_path": "lit_sft.SFTModule",
            "init_args": {
                "model_config": {"model_type": "qwen2"},
                "tokenizer_name_or_path": "builtin:byte-chatml",
            },
        },
        "trainer": {"accelerator": "gpu", "devices": 8},  # never instantiated: data check runs anywhere
        "data": {
            "class_path": "lit_sft.SFTDataModule",
            "init_args": {
                "train_files": train_file,
                "prompt_key": "question",
                "response_key": "answer",
                **data,
            },
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_data_check_reports_duplicates_malformed_lengths_and_answers(tmp_path, capsys) -> None:
    good = arithmetic_rows(10)
    rows = [
        *good,
        good[0],
        good[3],  # two exact duplicates
        {"question": "q", "answer": None},  # malformed
        {"question": "What is 2+2?", "answer": "It is four."},  # GSM8K format, no '#### N'
        {"question": "x" * 300, "answer": "#### 1"},  # longer than max_length
    ]
    train = write_jsonl(str(tmp_path / "train.jsonl"), rows)
    clean = str(tmp_path / "clean.jsonl")
    entry_point(
        [
            "data",
            "check",
            "--config",
            write_config(tmp_path, train, max_length=200, truncation="left"),
            "--clean",
            clean,
        ]
    )
    report = capsys.readouterr().out
    assert "== train: 15 rows" in report
    assert "exact duplicates: 2" in report
    assert "malformed rows: 1 (invalid_content: 1)" in report
    assert "train.jsonl, row 12, field 'answer': response is null" in report
    assert "max_length would truncate 1 rows and drop 0" in report
    assert "GSM8K-format responses without an extractable '#### <number>': 1" in report
    assert "train.jsonl, row 13" in report
    assert "padding waste: padded batches of 8 rows" in report
    assert "[[0+0=0\n  | #### 0<|im_end|>]]" in report
    with open(clean, encoding="utf-8") as handle:
        cleaned = [json.loads(line) for line in handle]
    assert len(cleaned) == 12 and cleaned[:10] == good
    assert (
        "cleaned train split: 12 rows written" in report and "3 removed (2 duplicates, 1 malformed)" in report
    )


def test_data_check_counts_what_truncation_error_would_reject(tmp_path, capsys) -> None:
    rows = [*arithmetic_rows(3), {"question": "x" * 300, "answer": "#### 1"}]
    train = write_jsonl(str(tmp_path / "train.jsonl"), rows)
    entry_point(["data", "check", "--config", write_config(tmp_path, train, max_length=200)])
    report = capsys.readouterr().out
    assert "max_length would truncate 0 rows and drop 1 (too_long: 1)" in report
    # Percentiles are of the untruncated lengths: the longest row shows its full length.
    total_line = next(line for line in report.splitlines() if line.startswith("total tokens"))
    assert int(total_line.split("p100 ")[1].split(" ")[0]) > 300


def test_data_check_gives_the_data_module_the_models_tokenizer_settings_as_fit_does(tmp_path) -> None:
    from lit_sft.commands.data_check import build_datamodule

    train = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(2))
    template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    dm, clean = build_datamodule(
        [
            "--config",
            write_config(tmp_path, train),
            "--model.init_args.trust_remote_code",
            "true",
            "--model.init_args.chat_template",
            template,
        ]
    )
    assert clean is None
    assert dm.trust_remote_code is True
    assert dm.chat_template == template
    assert dm.tokenizer_name_or_path == "builtin:byte-chatml"


def test_data_check_counts_content_the_template_drops_and_split_conversations(tmp_path, capsys) -> None:
    from tests.real_vocab import TEMPLATES

    call = {"type": "function", "function": {"name": "lookup", "arguments": {"term": "apple"}}}
    dropped = [
        {"role": "user", "content": "Look up apple."},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "a fruit"},
        {"role": "assistant", "content": "It is a fruit."},
    ]
    multi_turn = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    train = write_jsonl(str(tmp_path / "train.jsonl"), [{"messages": dropped}, {"messages": multi_turn}])
    for name, expected in [
        (
            "smollm2",
            [
                "rows whose chat template drops content: 1 (tool_calls: 1;",
                "row 0: the template does not render 'messages[1].tool_calls[0]'",
            ],
        ),
        (
            "qwen3",
            [
                "rows added by splitting conversations whose chat template rewrites history: 2",
                "rows whose chat template drops content: 0",
            ],
        ),
    ]:
        config = write_config(tmp_path, train)
        template = str(TEMPLATES / f"{name}.jinja")
        entry_point(["data", "check", "--config", config, "--model.init_args.chat_template", template])
        report = capsys.readouterr().out
        for line in expected:
            assert line in report, report


def test_data_check_reports_each_source_of_a_mixture(tmp_path, capsys) -> None:
    math = write_jsonl(str(tmp_path / "math.jsonl"), [*arithmetic_rows(6), arithmetic_rows(1)[0]])
    chat = write_jsonl(
        str(tmp_path / "chat.jsonl"),
        [
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": f"Hey {i}"}]}
            for i in range(3)
        ]
        + [{"messages": "not a list"}],
    )
    sources = [
        {"name": "math", "files": math, "weight": 1},
        {"name": "chat", "files": chat, "weight": 2, "format": "messages"},
    ]
    entry_point(["data", "check", "--config", write_config(tmp_path, sources)])
    report = capsys.readouterr().out
    assert "== train: 11 rows" in report
    # 7 + 3 well-formed rows an epoch, split 1:2 by weight.
    assert (
        "source math: 7 rows, 1 duplicates, 0 malformed" in report
        and "weight 1 -> 3 rows per epoch" in report
    )
    assert (
        "source chat: 4 rows, 0 duplicates, 1 malformed" in report
        and "weight 2 -> 7 rows per epoch" in report
    )
