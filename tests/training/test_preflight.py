"""Start-up checks fail before any heavy work, naming every problem at once."""

from __future__ import annotations

import os

import pytest

from lit_sft.commands.fit import entry_point

QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart.yaml")


def run(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        entry_point(["fit", "--config", QUICKSTART, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unwritable_outputs_and_gpu_only_options_are_reported_together(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    err = run(
        [
            "--trainer.default_root_dir", str(blocker / "run"),
            "--model.init_args.attn_implementation", "flash_attention_2",
            "--model.init_args.loss.implementation", "liger",
        ],
        capsys,
    )  # fmt: skip
    assert "lit-sft: error: the configuration cannot run:" in err
    assert f"trainer.default_root_dir: cannot write to {blocker / 'run'}" in err
    assert "model.attn_implementation=flash_attention_2 needs a CUDA GPU" in err
    assert "model.loss.implementation=liger needs a CUDA GPU" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))


def test_packing_with_unknown_attention_and_missing_files(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    err = run(
        [
            "--data", "lit_sft.SFTDataModule",
            "--data.init_args.train_files", str(tmp_path / "missing.parquet"),
            "--data.init_args.val_files", str(tmp_path / "missing_val.parquet"),
            "--data.init_args.packing", "true",
            "--model.init_args.attn_implementation", "my_custom_attention",
        ],
        capsys,
    )  # fmt: skip
    assert f"data.train_files: {tmp_path / 'missing.parquet'}: no such file" in err
    assert f"data.val_files: {tmp_path / 'missing_val.parquet'}: no such file" in err
    assert "data.packing with model.attn_implementation='my_custom_attention'" in err


def test_watching_validation_metrics_without_validation_data(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    err = run(["--data.init_args.num_val", "0"], capsys)
    assert "ModelCheckpoint monitors val/loss, but the data has no validation split" in err
    assert "GSM8KEvaluation has no questions" in err


def test_config_mistakes_fail_at_parse_time_naming_the_key(tmp_path, capsys) -> None:
    for args, key in [
        (["--data.init_args.batch_size", "many"], "batch_size"),
        (["--model.init_args.lora", "{r: sixteen}"], "lora"),
        (["--trainer.max_stepz", "3"], "max_stepz"),
        (["--data.init_args.truncation", "middle"], "truncation"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            entry_point(["fit", "--config", QUICKSTART, *args])
        assert exit_info.value.code == 2
        assert key in capsys.readouterr().err


def test_a_missing_required_path_fails_at_parse_time(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        entry_point(["fit", "--model", "lit_sft.SFTModule", "--data", "lit_sft.SFTDataModule"])
    assert exit_info.value.code == 2
    assert "train_files" in capsys.readouterr().err


def test_sequence_parallelism_needs_packing_and_a_divisible_world(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    err = run(["--model.init_args.sequence_parallel_size", "2"], capsys)
    assert "model.sequence_parallel_size > 1 splits packed sequences: set data.packing=true" in err
    assert "model.sequence_parallel_size=2 must divide the number of processes (1)" in err


def test_callbacks_are_recognised_by_type_not_by_class_name(tmp_path) -> None:
    from lightning.pytorch import Trainer

    from lit_sft import SFTDataModule, SFTModule
    from lit_sft.callbacks import GSM8KEvaluation
    from lit_sft.errors import ConfigError
    from lit_sft.training.preflight import preflight
    from tests.helpers import arithmetic_rows, tiny_model_config, write_jsonl

    class MyEvaluation(GSM8KEvaluation):  # a renamed subclass is still a GSM8K evaluation
        pass

    train = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(2))
    datamodule = SFTDataModule(train_files=train, tokenizer_name_or_path="builtin:byte-chatml")
    model = SFTModule(model_config=tiny_model_config(), tokenizer_name_or_path="builtin:byte-chatml")
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path)
    )
    preflight(trainer, model, datamodule)  # no evaluation callback: nothing to report
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        callbacks=[MyEvaluation()],
    )
    with pytest.raises(ConfigError, match="GSM8KEvaluation has no questions"):
        preflight(trainer, model, datamodule)
