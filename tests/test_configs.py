"""Every YAML in configs/ parses, builds its objects, and reads data of the shape it claims."""

from __future__ import annotations

import glob
import os
from types import SimpleNamespace

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from lit_sft import SFTDataModule, SFTModule
from lit_sft.callbacks import GSM8KEvaluation
from lit_sft.commands import prepare
from lit_sft.commands.fit import main
from tests.helpers import write_parquet

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
RECIPES = sorted(glob.glob(os.path.join(CONFIGS, "qwen2.5-0.5b", "*.yaml")))
ALL = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))


def test_every_config_starts_with_the_command_that_runs_it() -> None:
    assert len(ALL) >= 6
    for path in ALL:
        with open(path, encoding="utf-8") as handle:
            first_line = handle.readline()
        relative = os.path.relpath(path, os.path.join(CONFIGS, ".."))
        assert first_line.startswith("# lit-sft fit --config "), path
        assert relative in first_line, f"{path}: the header command does not name the file"


@pytest.fixture(scope="module")
def recipe_data(gsm8k_dir, tmp_path_factory) -> dict[str, str]:
    """GSM8K as `lit-sft prepare gsm8k` writes it (verl's format), and a messages parquet with tools."""
    out = tmp_path_factory.mktemp("prepared")
    prepare.gsm8k(gsm8k_dir, str(out / "gsm8k"), splits=["test"])
    chat = [
        {
            "messages": [
                {"role": "user", "content": f"Hi {i}"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Add 1 and 2"},
                {"role": "assistant", "content": "3"},
            ],
            "tools": "",
        }
        for i in range(60)
    ]
    return {
        "gsm8k": str(out / "gsm8k" / "test.parquet"),
        "multiturn": write_parquet(str(out / "chat.parquet"), chat),
    }


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_builds_with_a_tiny_stand_in_model_and_reads_its_data(
    path: str, tiny_model_dir: str, tmp_path, recipe_data
) -> None:
    data_file = recipe_data["multiturn"] if "multiturn" in path else recipe_data["gsm8k"]
    args = [
        "--config", path,
        "--model.init_args.model_name_or_path", tiny_model_dir,
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.precision", "32-true",
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--data.init_args.train_files", data_file,
        "--data.init_args.num_workers", "0",
        "--data.init_args.max_train_samples", "64",
        "--data.init_args.max_length", "4096",  # the stand-in tokenizer is byte-level: 4x longer than Qwen's
    ]  # fmt: skip
    with open(path, encoding="utf-8") as handle:
        has_val_files = "val_files" in handle.read()
    if has_val_files:
        args += ["--data.init_args.val_files", data_file]
    cli = main(args, run=False)
    assert isinstance(cli.model, SFTModule) and isinstance(cli.datamodule, SFTDataModule)
    assert cli.datamodule.tokenizer_name_or_path == tiny_model_dir  # linked from the model
    cli.model.configure_model()
    cli.datamodule.setup("fit")
    summary = cli.datamodule.summaries["train"]
    assert summary.kept == summary.rows_read > 0
    for callback in cli.trainer.callbacks:
        if isinstance(callback, GSM8KEvaluation):  # its keys must read the same data
            callback.setup(SimpleNamespace(datamodule=cli.datamodule), cli.model, "fit")
            assert len(callback.eval_set) == 1319 and callback.eval_set.references[0] == "18"
            assert "Let's think step by step" in callback.eval_set.questions[0]
    names = {type(callback).__name__ for callback in cli.trainer.callbacks}
    assert {"GSM8KEvaluation", "HFExport", "EarlyStopping", "ModelCheckpoint"} <= names or "multiturn" in path
    assert {"HFExport", "EarlyStopping", "ModelCheckpoint"} <= names
    assert {"RunSummary", "TrainingThroughput"} <= names  # the CLI's own, beside each config's
    if "lora" in path:
        trainable = {n for n, p in cli.model.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)
        assert cli.model.lora.r == 16 and cli.model.lora.alpha == 32


def test_quickstart_builds_its_own_tokenizer_and_data(tmp_path) -> None:
    cli = main(
        [
            "--config", os.path.join(CONFIGS, "quickstart.yaml"),
            "--data.init_args.num_train", "16",
            "--data.init_args.num_val", "4",
            "--trainer.default_root_dir", str(tmp_path),
        ],
        run=False,
    )  # fmt: skip
    assert cli.datamodule.tokenizer_name_or_path == "builtin:byte-chatml"
    cli.datamodule.setup("fit")
    assert (cli.datamodule.summaries["train"].kept, cli.datamodule.summaries["val"].kept) == (16, 4)
    first = cli.datamodule.tokenizer.decode(cli.datamodule.train_dataset[0]["input_ids"])
    assert "\n#### " in first


@pytest.mark.parametrize(
    ("logger_config", "logger_class"),
    [("tensorboard.yaml", TensorBoardLogger), ("wandb.yaml", WandbLogger), (None, CSVLogger)],
)
def test_logger_configs_compose_with_the_quickstart(
    logger_config, logger_class, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--config", os.path.join(CONFIGS, "quickstart.yaml")]
    if logger_config:
        args += ["--config", os.path.join(CONFIGS, "loggers", logger_config)]
    cli = main(args, run=False)
    assert isinstance(cli.trainer.logger, logger_class)


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_fits_and_exports_with_a_tiny_stand_in_model(
    path: str, tiny_model_dir: str, tmp_path, recipe_data
) -> None:
    """Each recipe runs `fit` as written (its logger, callbacks and schedule), shortened: two steps and a
    few GSM8K questions."""
    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle)
    for callback in values["trainer"]["callbacks"]:
        if callback["class_path"].endswith("GSM8KEvaluation"):
            callback["init_args"].update(max_samples=4, max_new_tokens=8)
    short = str(tmp_path / os.path.basename(path))
    with open(short, "w", encoding="utf-8") as handle:
        yaml.safe_dump(values, handle)
    data_file = recipe_data["multiturn"] if "multiturn" in path else recipe_data["gsm8k"]
    args = [
        "fit", "--config", short,
        "--model.init_args.model_name_or_path", tiny_model_dir,
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.precision", "32-true",
        "--trainer.max_steps", "2",
        "--trainer.accumulate_grad_batches", "1",
        "--trainer.val_check_interval", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--data.init_args.train_files", data_file,
        "--data.init_args.num_workers", "0",
        "--data.init_args.max_train_samples", "16",
        "--data.init_args.max_length", "4096",
    ]  # fmt: skip
    if "val_files" in values["data"]["init_args"]:
        args += ["--data.init_args.val_files", data_file, "--data.init_args.max_val_samples", "8"]
    cli = main(args)
    assert cli.trainer.global_step == 2
    assert os.path.isfile(tmp_path / "run" / "hf" / "final" / "config.json")
    assert glob.glob(str(tmp_path / "run" / "logs" / "version_0" / "metrics.csv"))

    last = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    validated = main(["validate", *args[1:], "--ckpt_path", last])
    assert "val/loss" in validated.trainer.callback_metrics
