"""The malformed-input corpus (tests/corpus): every case gives one clear error naming file, row and field
through the real `lit-sft` entry point (no traceback), or, with skip_invalid_rows, is dropped and counted
so that the counts add up to the rows read."""

from __future__ import annotations

import json
import os

import pytest

from lit_sft import SFTDataModule
from lit_sft.commands.fit import entry_point
from lit_sft.errors import ConfigError

CORPUS = os.path.join(os.path.dirname(__file__), "corpus")
with open(os.path.join(CORPUS, "expected.json"), encoding="utf-8") as _handle:
    EXPECTED: dict[str, dict] = json.load(_handle)

TINY_MODEL = '{"model_type": "qwen2", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}'


def test_the_corpus_is_big_enough_and_current() -> None:
    assert len(EXPECTED) >= 30
    assert sorted(os.listdir(os.path.join(CORPUS, "files"))) == sorted(EXPECTED)


def options_for(name: str, tmp_path) -> dict:
    options = dict(EXPECTED[name]["options"])
    if "chat_template" in options:  # through a file: the command line would read "{...}" as a mapping
        template = tmp_path / "template.jinja"
        template.write_text(options["chat_template"])
        options["chat_template"] = str(template)
    return options


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lit_sft_fit_reports_each_case_in_one_line(name: str, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    path = os.path.join(CORPUS, "files", name)
    options = options_for(name, tmp_path)
    args = [
        "fit",
        "--model", "lit_sft.SFTModule",
        "--model.init_args.model_config", TINY_MODEL,
        "--model.init_args.tokenizer_name_or_path", "builtin:byte-chatml",
        "--data", "lit_sft.SFTDataModule",
        "--data.init_args.train_files", path,
        "--trainer.max_steps", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
    ]  # fmt: skip
    for key, value in options.items():
        prefix = "--model.init_args." if key == "chat_template" else "--data.init_args."
        args += [prefix + key, str(value)]
    with pytest.raises(SystemExit) as exit_info:
        entry_point(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-2000:]
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("lit-sft: error:")]
    assert name in line and EXPECTED[name]["error"] in line, line


@pytest.mark.parametrize("name", sorted(n for n, case in EXPECTED.items() if case["dropped_as"]))
def test_skip_invalid_rows_drops_and_counts_each_row_level_case(name: str, tmp_path) -> None:
    options = options_for(name, tmp_path)
    dm = SFTDataModule(
        train_files=os.path.join(CORPUS, "files", name),
        tokenizer_name_or_path="builtin:byte-chatml",
        skip_invalid_rows=True,
        **options,
    )
    try:
        dm.setup("fit")
    except ConfigError as error:  # every row of the file was bad: the summary says so
        assert "no training rows left" in str(error) and EXPECTED[name]["dropped_as"] in str(error)
        return
    summary = dm.summaries["train"]
    assert summary.dropped.get(EXPECTED[name]["dropped_as"], 0) >= 1
    assert summary.kept + sum(summary.dropped.values()) == summary.rows_read
