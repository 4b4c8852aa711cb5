"""verl settings become the lit_sft options with the same meaning; the printed config runs in lit-sft fit."""

from __future__ import annotations

import os
import shlex

import pytest
import torch
import yaml

from lit_sft.commands.verl import build, lightning_yaml
from lit_sft.errors import ConfigError
from lit_sft.verl.translate import Launch

#: The seed documents' commands, verbatim but for paths (verl's docs, examples/sft/gsm8k/run_qwen_05_sp2.sh).
FIRST = shlex.split("data.train_files=/d/train.parquet data.val_files=/d/test.parquet data.train_batch_size=128 "
         "model.path=/m optim.lr=5e-6 trainer.n_gpus_per_node=4 trainer.total_epochs=10 "
         "trainer.default_local_dir=./checkpoints/qwen7b_sft")  # fmt: skip
SECOND = shlex.split("data.train_files=/d/train.parquet data.val_files=/d/test.parquet "
          "data.prompt_key=extra_info data.response_key=extra_info optim.lr=1e-4 "
          "data.prompt_dict_keys=['question'] +data.response_dict_keys=['answer'] "
          "data.micro_batch_size_per_gpu=32 model.partial_pretrain=Qwen/Qwen2.5-0.5B-Instruct "
          "trainer.default_local_dir=./save_ckpts trainer.project_name=gsm8k-sft "
          "trainer.experiment_name=gsm8k-sft-qwen-2.5-0.5b-instruct trainer.logger=['console'] "
          "trainer.total_epochs=1 trainer.total_training_steps=1 "
          "model.lora_rank=32 model.lora_alpha=16 model.target_modules=all-linear model.strategy=fsdp "
          "ulysses_sequence_parallel_size=2 use_remove_padding=true")  # fmt: skip
EIGHT_GPUS = Launch(world_size=8, local_world_size=8, cuda=True)


def test_the_first_seed_command_uses_the_engine_trainers_model_path() -> None:
    # model.path is an engine key: the first command is read with sft_trainer_engine.yaml's defaults.
    native = build(FIRST, Launch(world_size=4, local_world_size=4, cuda=True)).config
    data, trainer = native["data"]["init_args"], native["trainer"]
    assert data["global_batch_size"] == 128 and data["drop_last"] is True
    assert data["max_tokens_per_batch"] == 8192  # use_dynamic_bsz: max_token_len_per_gpu, not 4 rows
    assert data["format"] == "messages" and data["packing"] is True  # pad_mode no_padding, use_remove_padding
    assert native["model"]["init_args"]["optimizer"]["init_args"] == {
        "lr": 5e-6,
        "betas": [0.9, 0.999],
        "weight_decay": 0.01,
    }
    assert (
        trainer["devices"] == 4
        and trainer["max_epochs"] == 10
        and trainer["default_root_dir"] == "./checkpoints/qwen7b_sft"
    )
    assert (
        trainer["strategy"]["class_path"].endswith("FSDPStrategyPreset")
        and trainer["precision"] == "bf16-mixed"
    )


def test_the_second_seed_command_maps_sequence_parallelism_packing_lora_and_the_global_batch() -> None:
    translation = build(SECOND, EIGHT_GPUS)
    native = translation.config
    model, data, trainer = native["model"]["init_args"], native["data"]["init_args"], native["trainer"]
    assert model["sequence_parallel_size"] == 2 and data["packing"] is True
    assert model["lora"] == {"r": 32, "alpha": 16, "target_modules": "all-linear"}
    assert model["model_name_or_path"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert data["prompt_key"] == "extra_info.question" and data["response_key"] == "extra_info.answer"
    # 256 rows (verl's default train_batch_size) = 32 per micro-batch x 4 data-parallel groups x 2
    assert data["global_batch_size"] == 256 and data["batch_size"] == 32
    assert "256 rows per step = 32 x 4 x accumulation 2" in translation.notes[-1]
    assert trainer["max_steps"] == 1 and trainer["val_check_interval"] == 2  # verl validates at its last step
    assert [logger["class_path"].rsplit(".", 1)[1] for logger in trainer["logger"]] == ["CSVLogger"]
    assert trainer["strategy"]["init_args"]["param_dtype"] == "bfloat16"
    assert model["lr_scheduler"]["init_args"] == {
        "schedule": "cosine",
        "warmup_ratio": 0.1,
        "min_lr_ratio": 0.0,
    }
    assert model["gradient_checkpointing"] is True  # verl's enable_gradient_checkpointing default


def test_a_global_batch_that_does_not_divide_is_an_error_in_verls_words() -> None:
    with pytest.raises(
        ConfigError, match=r"data.train_batch_size=100 is not divisible by the data-parallel size 8"
    ):
        build(["data.train_batch_size=100"], EIGHT_GPUS)
    # verl's legacy _normalize_config_bsz asserts (train_batch_size / dp) % micro_batch_size_per_gpu == 0
    with pytest.raises(ConfigError) as refused:
        build(["data.train_batch_size=72"], EIGHT_GPUS)
    message = str(refused.value)
    assert "data.train_batch_size=72" in message and "data.micro_batch_size_per_gpu=4" in message
    assert "9 rows per rank" in message
    assert (
        "global_batch_size" not in message.replace("train_batch_size", "")
        and "data.batch_size" not in message
    )
    # the engine trainer without use_dynamic_bsz: 36 rows per rank cut into 36 // 8 = 4 equal chunks of 9
    engine = ["model.path=/m", "data.use_dynamic_bsz=false", "data.micro_batch_size_per_gpu=8"]
    translation = build([*engine, "data.train_batch_size=72"], Launch(world_size=2, local_world_size=2))
    assert translation.config["data"]["init_args"]["batch_size"] == 9
    assert any("into 4 micro-batches of 9 rows" in warning for warning in translation.warnings)
    with pytest.raises(
        ConfigError, match=r"data.train_batch_size=74 / data-parallel size 2 .* = 37 rows per rank"
    ):
        build([*engine, "data.train_batch_size=74"], Launch(world_size=2, local_world_size=2))
    with pytest.raises(ConfigError, match="ulysses_sequence_parallel_size=3 does not divide"):
        build(["ulysses_sequence_parallel_size=3", "use_remove_padding=true"], EIGHT_GPUS)
    with pytest.raises(ConfigError, match="needs use_remove_padding=true"):
        build(["ulysses_sequence_parallel_size=2"], EIGHT_GPUS)


def test_verl_options_without_a_lit_sft_counterpart_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"'mlflow'.*console, wandb, tensorboard"):
        build(["trainer.logger=['console','mlflow']"], Launch())
    with pytest.raises(ConfigError, match="'wsd' is not supported"):
        build(["optim.lr_scheduler=wsd"], Launch())
    with pytest.raises(ConfigError, match=r"trainer.device='npu'"):
        build(["trainer.device=npu"], Launch())


def test_engine_keys_map_like_the_legacy_ones() -> None:
    native = build(
        ["model.path=/m", "engine.strategy=fsdp2", "engine.param_offload=true", "data.messages_key=conversation",
         "optim.lr_scheduler_type=cosine", "optim.lr_warmup_steps=3", "optim.min_lr_ratio=0.1",
         "trainer.save_freq=after_each_epoch", "trainer.test_freq=5", "data.micro_batch_size_per_gpu=2",
         "data.train_batch_size=8", "model.override_config={attention_dropout: 0.0}"],
        Launch(world_size=2, local_world_size=2),
    ).config  # fmt: skip
    model, data, trainer = native["model"]["init_args"], native["data"]["init_args"], native["trainer"]
    assert (
        data["messages_key"] == "conversation" and data["truncation"] == "right"
    )  # no_padding cuts at max_length
    assert data["max_tokens_per_batch"] == 8192  # validation too: verl's infer_batch splits by tokens
    assert model["lr_scheduler"]["init_args"] == {
        "schedule": "cosine",
        "warmup_ratio": 0.0,
        "min_lr_ratio": 0.1,
        "warmup_steps": 3,
    }
    assert model["model_kwargs"] == {"attention_dropout": 0.0}
    assert trainer["strategy"]["init_args"]["cpu_offload"] is True
    assert trainer["callbacks"][0]["init_args"]["every_n_epochs"] == 1
    assert trainer["check_val_every_n_epoch"] is None
    assert trainer["callbacks"][1]["init_args"] == {"every_n_train_steps": 5}  # counted in optimizer steps


def test_wandb_and_tensorboard_loggers_take_verls_names(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_DIR", "/w")
    monkeypatch.delenv("TENSORBOARD_DIR", raising=False)
    loggers = build(["trainer.logger=['wandb','tensorboard']", "trainer.project_name=p", "trainer.experiment_name=e",
                     "trainer.default_local_dir=/c"], Launch()).config["trainer"]["logger"]  # fmt: skip
    assert loggers[0]["init_args"] == {"save_dir": "/c/logs", "name": "tensorboard", "version": "p/e"}
    assert loggers[1]["init_args"] == {"project": "p", "name": "e", "save_dir": "/w"}


def test_resume_modes_find_global_step_folders(tmp_path) -> None:
    for step in (2, 10):
        os.makedirs(tmp_path / f"global_step_{step}" / "checkpoint.ckpt")
    os.makedirs(tmp_path / "global_step_12")  # no lit_sft checkpoint inside: not resumable
    root = f"trainer.default_local_dir={tmp_path}"
    assert build([root], Launch()).config["ckpt_path"] == str(tmp_path / "global_step_10" / "checkpoint.ckpt")
    assert "ckpt_path" not in build([root, "trainer.resume_mode=disable"], Launch()).config
    chosen = build(
        [root, "trainer.resume_mode=resume_path", f"trainer.resume_from_path={tmp_path}/global_step_2"],
        Launch(),
    )
    assert chosen.config["ckpt_path"] == str(tmp_path / "global_step_2" / "checkpoint.ckpt")
    stopped = tmp_path / "last.ckpt"  # a run stopped by SIGTERM after its last global_step_N: newer
    stopped.write_bytes(b"")
    os.utime(stopped, (os.path.getmtime(tmp_path / "global_step_10" / "checkpoint.ckpt") + 5,) * 2)
    assert build([root], Launch()).config["ckpt_path"] == str(stopped)
    with pytest.raises(ConfigError, match="verl's own checkpoints do not resume"):
        build([root, f"trainer.resume_from_path={tmp_path}/global_step_12"], Launch())
    with pytest.raises(ConfigError, match=r"needs trainer.resume_from_path"):
        build([root, "trainer.resume_mode=resume_path"], Launch())


def test_the_printed_config_builds_lit_sfts_objects(tmp_path, tiny_model_dir) -> None:
    from lit_sft.commands.fit import main
    from lit_sft.training.strategies import FSDP2Strategy

    text = lightning_yaml(build([f"model.partial_pretrain={tiny_model_dir}", "data.train_files=/d/t.parquet",
                                 "trainer.logger=['console']", f"trainer.default_local_dir={tmp_path}",
                                 "data.train_batch_size=8", "model.lora_rank=4"], Launch()))  # fmt: skip
    assert text.startswith("# lit-sft fit --config")
    path = tmp_path / "native.yaml"
    path.write_text(text)
    cli = main(["--config", str(path)], run=False)
    assert isinstance(cli.trainer.strategy, FSDP2Strategy)
    assert cli.datamodule.global_batch_size == 8 and cli.datamodule.drop_last
    assert cli.model.lora.r == 4 and cli.model.lora.alpha == 16
    assert [type(c).__name__ for c in cli.trainer.callbacks].count("GlobalStepCheckpoint") == 1
    assert yaml.safe_load(text)["data"]["init_args"]["prompt_key"] == "question"  # verl's legacy default


def test_the_console_script_runs_verl_and_prints_errors_as_one_line(capsys) -> None:
    from lit_sft.commands.fit import entry_point

    with pytest.raises(SystemExit) as stopped:
        entry_point(["verl", "--help"])
    assert stopped.value.code == 0
    assert "verl's SFT command line, run by lit_sft" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        entry_point(["verl", "data.train_batch_sise=8"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        "lit-sft: error: unknown verl SFT trainer key 'data.train_batch_sise'; did you mean 'data.train_batch_size'"
    )
    assert "\n" not in error  # one line, no traceback


def test_a_per_row_enable_thinking_column_is_refused_not_ignored(tmp_path) -> None:
    from tests.helpers import write_parquet

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = write_parquet(str(tmp_path / "think.parquet"), [{"messages": messages, "enable_thinking": True}])
    with pytest.raises(ConfigError, match="per-row 'enable_thinking' column"):
        build(["model.path=/m", f"data.train_files={path}"], Launch())
    write_parquet(path, [{"messages": messages}])
    assert (
        build(["model.path=/m", f"data.train_files={path}"], Launch()).config["data"]["init_args"]["format"]
        == "messages"
    )


def test_without_torchrun_the_machine_decides_the_processes_not_n_gpus_per_node() -> None:
    # verl's SFT trainers take torch.distributed's world; trainer.n_gpus_per_node (8 by default) is not read
    two_gpus = Launch(cuda=True, cuda_devices=2)
    assert build([], two_gpus).config["trainer"]["devices"] == 2  # legacy default n_gpus_per_node=8
    translation = build(["trainer.n_gpus_per_node=8", "data.train_batch_size=32"], two_gpus)
    assert translation.config["trainer"]["devices"] == 2
    assert any(
        "n_gpus_per_node=8 without torchrun: running on the 2 GPU(s)" in w for w in translation.warnings
    )
    assert build(["model.path=/m"], Launch()).config["trainer"]["devices"] == 1  # CPU: one process
    assert build([], Launch(world_size=4, local_world_size=4, cuda=True)).config["trainer"]["devices"] == 4


def qwen3_8b_fsdp(nproc: int, sp_size: int) -> list[str]:
    """verl's examples/sft/gsm8k/run_qwen3_8b_fsdp.sh (verl-project/verl main) as its torchrun line passes it,
    with USE_PEFT=1 (its default) and the save path /ckpt."""
    return shlex.split(
        "data.train_files=/d/train.parquet data.val_files=/d/test.parquet data.micro_batch_size_per_gpu=64 "
        "data.messages_key=messages data.ignore_input_ids_mismatch=True optim.lr=1e-4 engine=fsdp "
        f"engine.ulysses_sequence_parallel_size={sp_size} model.path=Qwen/Qwen3-8B model.use_remove_padding=true "
        "trainer.default_local_dir=/ckpt trainer.project_name=gsm8k-sft "
        'trainer.experiment_name=gsm8k-sft-qwen3-8b-instruct trainer.logger=\'["console","wandb"]\' '
        "trainer.total_epochs=2 model.lora_rank=32 model.lora_alpha=16 model.target_modules=all-linear"
    )


@pytest.mark.parametrize("sp_size", [1, 2])
def test_dynamic_batch_size_caps_micro_batches_by_tokens_as_verl_does(sp_size: int) -> None:
    # use_dynamic_bsz (the engine default): verl ignores micro_batch_size_per_gpu and splits each rank's
    # 256 / dp rows by tokens, max_token_len_per_gpu (8192) x sp; no divisibility check against the 64 rows.
    translation = build(qwen3_8b_fsdp(8, sp_size), EIGHT_GPUS)
    data, model = translation.config["data"]["init_args"], translation.config["model"]["init_args"]
    assert data["global_batch_size"] == 256 and data["max_tokens_per_batch"] == 8192 * sp_size
    assert data["packing"] is True and model["sequence_parallel_size"] == sp_size
    assert "trainer.accumulate_grad_batches" not in translation.config["trainer"]  # measured from the data
    assert f"{256 // (8 // sp_size)} per data-parallel rank" in translation.notes[-1]
    (mismatch,) = [w for w in translation.warnings if "ignore_input_ids_mismatch" in w]
    assert "steps per epoch are not verl's" in mismatch


def messages_rows(count: int) -> list[dict]:
    rows = []
    for i in range(count):
        question = f"What is {i} plus {i % 7}?" + " Think it over." * (i % 6)
        answer = f"{i} plus {i % 7} is {i + i % 7}." + " That is all." * (i % 4)
        rows.append(
            {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
        )
    return rows


def test_translated_training_and_validation_micro_batches_hold_at_most_the_token_budget(
    tmp_path, tiny_model_dir
) -> None:
    from lit_sft import SFTDataModule
    from tests.helpers import write_parquet

    train = write_parquet(str(tmp_path / "train.parquet"), messages_rows(24))
    val = write_parquet(str(tmp_path / "val.parquet"), messages_rows(12))
    words = [f"model.path={tiny_model_dir}", "engine=fsdp", "model.use_remove_padding=true",
             f"data.train_files={train}", f"data.val_files={val}", "data.train_batch_size=8",
             "data.max_length=256", "data.max_token_len_per_gpu=256"]  # fmt: skip
    options = build(words, Launch()).config["data"]["init_args"]
    data = SFTDataModule(**options, tokenizer_name_or_path=tiny_model_dir)
    data.setup("fit")
    budget, lengths = 256, data.train_dataset["num_tokens"]
    assert max(lengths) <= budget < sum(lengths[:8])  # a step's 8 rows need more than one micro-batch
    val_batches = list(data.val_dataloader())
    assert all(batch["input_ids"].numel() <= budget for batch in val_batches)
    assert sum(int(batch["input_ids"].numel()) for batch in val_batches) == sum(
        data.val_dataset["num_tokens"]
    )
    # training: each step takes 8 rows (verl's train_batch_size), split into micro-batches under the budget
    sampler = data._sampler(data.train_dataset, data.batch_size, True, 1, step_rows=8)
    for step in sampler.step_shares(0):
        (share,) = step  # one data-parallel rank
        assert sorted(i for group in share for i in group) == sorted(set(i for group in share for i in group))
        assert sum(len(group) for group in share) == 8
        assert all(sum(lengths[i] for i in group) <= budget for group in share)


@pytest.mark.skipif(
    tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 7),
    reason="verl's engine=fsdp is FSDP2, whose fully_shard runs on a CPU from torch 2.7 (2.6 records CUDA stream events)",
)
def test_verl_validates_every_test_freq_steps_and_at_its_last_step(tmp_path, tiny_model_dir) -> None:
    import csv

    from lit_sft.commands.verl import main
    from tests.helpers import write_parquet

    train = write_parquet(str(tmp_path / "train.parquet"), messages_rows(12))
    val = write_parquet(str(tmp_path / "val.parquet"), messages_rows(4))
    # 12 rows, 4 per step: 3 steps, each split by a 256-token budget into several micro-batches. verl
    # (is_last_step in sft_trainer.py) validates at step 2 (test_freq) and at step 3, the last, then saves.
    main("verl", [f"model.path={tiny_model_dir}", "engine=fsdp", "model.use_remove_padding=true",
                  f"data.train_files={train}", f"data.val_files={val}", "data.train_batch_size=4",
                  "data.max_length=256", "data.max_token_len_per_gpu=256", "trainer.total_epochs=1",
                  "trainer.test_freq=2", "trainer.save_freq=2", "trainer.logger=['console']",
                  f"trainer.default_local_dir={tmp_path / 'ckpt'}"])  # fmt: skip
    with open(tmp_path / "ckpt" / "logs" / "csv" / "metrics.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    trained = [int(row["step"]) for row in rows if row.get("train/loss")]
    validated = [int(row["step"]) for row in rows if row.get("val/loss")]
    assert trained == [0, 1, 2] and validated == [1, 2]  # Lightning's step column counts from 0
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("global_step_*")) == [
        "global_step_2",
        "global_step_3",
    ]
