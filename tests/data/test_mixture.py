"""Weighted mixtures: each source's share of an epoch, its own format options, its counts, its parsing."""

from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np
import pytest
import yaml

from lit_sft.data import SFTDataModule
from lit_sft.data.mixture import DataSource
from lit_sft.errors import ConfigError
from tests.helpers import arithmetic_rows, write_jsonl, write_parquet

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
MIXTURE = os.path.join(CONFIGS, "mixtures", "gsm8k_and_chat.yaml")


def chat_rows(count: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"Hello {i}"}]}
        for i in range(count)
    ]


def mixture(tmp_path, train_files, **kwargs) -> SFTDataModule:
    kwargs.setdefault("prompt_key", "question")
    kwargs.setdefault("response_key", "answer")
    return SFTDataModule(train_files=train_files, tokenizer_name_or_path="builtin:byte-chatml", **kwargs)


@pytest.fixture
def two_sources(tmp_path) -> tuple[str, str]:
    """10 arithmetic rows (prompt/response) and 30 chat rows (messages)."""
    return (
        write_jsonl(str(tmp_path / "math.jsonl"), arithmetic_rows(10)),
        write_parquet(str(tmp_path / "chat.parquet"), chat_rows(30)),
    )


def epoch_rows(dm: SFTDataModule, epoch: int) -> list[int]:
    sampler = dm.train_dataloader().sampler
    return [i for batch in sampler.plan(epoch) if batch.weight for i in batch.indices]


def test_weights_set_each_sources_share_of_every_epoch(tmp_path, two_sources) -> None:
    math, chat = two_sources
    dm = mixture(
        tmp_path,
        [DataSource(math, name="math", weight=3), DataSource(chat, name="chat", weight=1, format="messages")],
        batch_size=4,
    )
    dm.setup("fit")
    # 40 rows an epoch: math (rows 0-9) gets 30, three whole passes; chat (rows 10-39) a subset of 10.
    first, second = epoch_rows(dm, 0), epoch_rows(dm, 1)
    for rows in (first, second):
        counts = Counter(rows)
        assert len(rows) == 40
        assert {counts[i] for i in range(10)} == {3}
        chat_seen = [i for i in rows if i >= 10]
        assert len(chat_seen) == 10 == len(set(chat_seen))
    assert {i for i in first if i >= 10} != {i for i in second if i >= 10}  # a new subset every epoch
    assert epoch_rows(dm, 1) == second  # deterministic: a resumed epoch draws the same rows
    summary = dm.summaries["train"]
    assert (summary.sources["math"].rows_per_epoch, summary.sources["chat"].rows_per_epoch) == (30, 10)
    assert summary.rows_per_epoch == 40 and summary.kept == 40


def test_replacement_draws_independently(tmp_path, two_sources) -> None:
    math, chat = two_sources
    dm = mixture(
        tmp_path,
        [DataSource(math, weight=1, replacement=True), DataSource(chat, weight=1, format="messages")],
        batch_size=4,
        seed=3,
    )
    dm.setup("fit")
    counts = Counter(epoch_rows(dm, 0))
    math_counts = [counts[i] for i in range(10)]
    assert sum(math_counts) == 20
    # Whole passes would give every row exactly twice; independent draws do not (for this seed).
    assert set(math_counts) != {2}


def test_each_source_reads_with_its_own_format_options(tmp_path, two_sources) -> None:
    math, chat = two_sources
    dm = mixture(
        tmp_path,
        [
            DataSource(math, name="math"),
            DataSource(chat, name="chat", format="messages", system_prompt="Be brief."),
        ],
        shuffle=False,
    )
    dm.setup("fit")
    decode = dm.tokenizer.decode
    assert "Be brief." not in decode(dm.train_dataset[0]["input_ids"])
    assert "What is 0 plus 0" in decode(dm.train_dataset[0]["input_ids"])
    assert "<|im_start|>system\nBe brief.<|im_end|>" in decode(dm.train_dataset[10]["input_ids"])
    assert dm.mixture is None  # no weights: every row once an epoch
    assert sorted(epoch_rows(dm, 0)) == list(range(40))


def test_max_samples_caps_a_source_and_the_summary_counts_each_source(tmp_path, two_sources, caplog) -> None:
    math, chat = two_sources
    dm = mixture(
        tmp_path,
        [DataSource(math, name="math", max_samples=4), DataSource(chat, name="chat", format="messages")],
    )
    with caplog.at_level(logging.INFO, logger="lit_sft"):
        dm.setup("fit")
    summary = dm.summaries["train"]
    assert (summary.sources["math"].kept, summary.sources["chat"].kept, summary.kept) == (4, 30, 34)
    tokens = [len(dm.train_dataset[i]["input_ids"]) for i in range(34)]
    assert summary.sources["math"].tokens == sum(tokens[:4])
    assert summary.sources["chat"].tokens == sum(tokens[4:])
    assert "train: 34 rows read, 34 kept" in caplog.text
    assert "  source math: 4 rows read, 4 kept" in caplog.text
    assert "  source chat: 30 rows read, 30 kept" in caplog.text
    assert dm.state_dict()["summaries"]["train"]["sources"]["math"]["kept"] == 4  # saved for model cards


def test_packed_mixtures_keep_the_first_epochs_length(tmp_path, two_sources) -> None:
    math, chat = two_sources
    dm = mixture(
        tmp_path,
        [DataSource(math, weight=1), DataSource(chat, weight=3, format="messages")],
        packing=True,
        max_length=128,
        max_tokens_per_batch=256,
    )
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    for epoch in range(4):
        plan = sampler.plan(epoch)
        assert len(plan) == len(sampler)
        for batch in plan:  # every pack fits its budget, whatever rows the epoch drew
            assert int(np.sum(sampler.num_tokens[list(batch.indices)])) <= 256
    # A step's token count covers exactly the rows of its (weighted) micro-batches.
    plan = sampler.plan(0)
    assert plan[0].step_trained_tokens == int(sampler.num_trained[list(plan[0].indices)].sum())


def test_configuration_mistakes_name_the_source(tmp_path, two_sources) -> None:
    math, chat = two_sources
    with pytest.raises(ConfigError, match="give every source a weight, or none"):
        mixture(tmp_path, [DataSource(math, weight=1), DataSource(chat)])
    with pytest.raises(ConfigError, match="weight of 'x' must be positive"):
        mixture(tmp_path, [DataSource(math, name="x", weight=0)])
    with pytest.raises(ConfigError, match="several sources are named"):
        mixture(tmp_path, [math, math])
    # The split's max_train_samples keeps the first 5 rows, all from math: chat has nothing to draw from.
    with pytest.raises(ConfigError, match="the weighted source 'c' has no training rows left"):
        mixture(
            tmp_path, [DataSource(math, weight=1), DataSource(chat, name="c", weight=1)], max_train_samples=5
        ).setup("fit")


def test_the_mixture_recipe_parses_into_sources(tiny_model_dir, tmp_path, two_sources) -> None:
    from lit_sft.commands.fit import main

    recipe = os.path.join(CONFIGS, "qwen2.5-0.5b", "gsm8k_full.yaml")
    base = ["--model.init_args.model_name_or_path", tiny_model_dir, "--trainer.accelerator", "cpu"]
    base += ["--trainer.devices", "1", "--trainer.default_root_dir", str(tmp_path / "run")]
    cli = main(["--config", recipe, "--config", MIXTURE, *base], run=False)
    gsm8k, chat = cli.datamodule.data_sources
    assert (gsm8k.name, gsm8k.weight, chat.name, chat.weight, chat.max_samples) == (
        "gsm8k",
        3,
        "chat",
        1,
        20000,
    )
    assert chat.format_options(cli.datamodule.format_options).system_prompt == "You are a helpful assistant."
    assert (
        cli.datamodule.format_options.response_key == "extra_info.answer"
    )  # the recipe's keys stay the default
    assert cli.datamodule.hparams["train_files"][0] == {"files": gsm8k.files, "name": "gsm8k", "weight": 3}

    # The same recipe on real files: each source is read with its own keys and drawn by weight.
    math, chat_file = two_sources
    with open(MIXTURE, encoding="utf-8") as handle:
        values = yaml.safe_load(handle)
    sources = values["data"]["init_args"]["train_files"]
    sources[0].update(files=math, max_samples=8)
    sources[1].update(files=chat_file)
    values["data"]["init_args"].update(prompt_key="question", response_key="answer", val_files=None)
    local = tmp_path / "mixture.yaml"
    local.write_text(yaml.safe_dump(values))
    cli = main(["--config", recipe, "--config", str(local), *base], run=False)
    cli.datamodule.setup("fit")
    summary = cli.datamodule.summaries["train"]
    assert (summary.sources["gsm8k"].rows_per_epoch, summary.sources["chat"].rows_per_epoch) == (29, 9)


def test_the_start_up_check_names_every_sources_missing_files(tmp_path, two_sources) -> None:
    math, _ = two_sources
    missing = str(tmp_path / "missing.jsonl")
    dm = mixture(
        tmp_path,
        [DataSource(str(tmp_path / "none-*.jsonl"), weight=1), DataSource([math, missing], weight=1)],
    )
    problems = dm.preflight_problems()
    assert len(problems) == 2
    assert "none-*.jsonl" in problems[0] and problems[1] == f"data.train_files: {missing}: no such file"


def test_source_options_are_documented_in_the_help(capsys) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(SFTDataModule, "data")
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "``weight``, the source's share of each epoch's rows relative to the other sources' weights" in text
    )
    assert "``replacement``, draw that share with replacement" in text and "``system_prompt``" in text


def test_a_plain_path_on_the_command_line_stays_a_path(tmp_path) -> None:
    """jsonargparse reads a dataclass-typed value naming a file as a config file: a CSV path would become
    its contents. train_files is typed so that it does not (its entries are checked instead)."""
    from lit_sft.commands.fit import main

    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("question,answer\n1,2\n")
    args = ["--model", "lit_sft.SFTModule", "--model.init_args.model_config", "{model_type: qwen2}"]
    args += [
        "--model.init_args.tokenizer_name_or_path",
        "builtin:byte-chatml",
        "--data",
        "lit_sft.SFTDataModule",
    ]
    args += ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    cli = main([*args, "--data.init_args.train_files", str(csv_file)], run=False)
    assert cli.datamodule.train_files == str(csv_file)
    with pytest.raises(SystemExit):  # a misspelt key is refused by the parser
        main([*args, "--data.init_args.train_files", "[{files: a.jsonl, wieght: 2}]"], run=False)
    with pytest.raises(ConfigError, match="takes only DataSource's keys"):  # and from Python
        mixture(tmp_path, [{"files": "a.jsonl", "wieght": 2}])
