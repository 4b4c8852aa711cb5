"""``lit-sft verl`` end to end on CPU: the seed documents' commands with a tiny local model and a few GSM8K
rows in verl's formats, in one process and in two (torchrun, gloo)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="module")
def verl_gsm8k(tmp_path_factory, gsm8k_dir) -> str:
    """``lit-sft prepare gsm8k`` output (verl's single-turn parquet and the multiturn/ copy) for 16 + 4
    short GSM8K problems."""
    from lit_sft.commands import prepare

    source = tmp_path_factory.mktemp("gsm8k-source")
    for split, count in (("train", 16), ("test", 4)):
        with open(os.path.join(gsm8k_dir, f"{split}.jsonl"), encoding="utf-8") as handle:
            rows = [row for row in map(json.loads, handle) if len(row["question"]) + len(row["answer"]) < 420]
        with open(source / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows[:count])
    out = str(tmp_path_factory.mktemp("gsm8k-verl"))
    prepare.main("prepare", ["gsm8k", "--source", str(source), "--out", out])
    return out


def lit_sft(
    args: list[str], cwd, processes: int = 1, check: bool = True, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m lit_sft <args>`` (under torchrun with several processes); with ``check``, it must pass."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
    ]
    command = (launcher if processes > 1 else [sys.executable]) + ["-m", "lit_sft", *args]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    assert not check or result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def losses(metrics_csv: str) -> dict[int, float]:
    with open(metrics_csv, encoding="utf-8") as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def assert_loadable_hf_model(folder: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size == len(tokenizer)


@pytest.mark.slow
def test_the_first_seed_command_runs_on_one_process_and_its_printed_config_runs_identically(
    tmp_path, verl_gsm8k, tiny_model_dir
) -> None:
    data = os.path.join(verl_gsm8k, "multiturn")  # verl's gsm8k_sft: messages rows
    words = [
        f"data.train_files={data}/train.parquet", f"data.val_files={data}/test.parquet",
        "data.train_batch_size=8", f"model.path={tiny_model_dir}", "optim.lr=5e-6", "trainer.n_gpus_per_node=4",
        "trainer.total_epochs=2", "trainer.default_local_dir=./checkpoints/qwen7b_sft",
        "trainer.save_freq=1", "trainer.max_ckpt_to_keep=2",
    ]  # fmt: skip
    printed = lit_sft(["verl", *words, "--print-lightning-config"], tmp_path).stdout  # before any checkpoint
    (tmp_path / "native.yaml").write_text(printed.replace("./checkpoints/qwen7b_sft", "./native"))
    run = lit_sft(["verl", *words], tmp_path)
    assert "trainer.n_gpus_per_node=4 without torchrun: running on one CPU process" in run.stderr
    root = tmp_path / "checkpoints" / "qwen7b_sft"
    # 16 rows, 8 per step: 2 steps per epoch, 4 in all; a checkpoint every step, the newest 2 kept
    assert sorted(p.name for p in root.glob("global_step_*")) == ["global_step_3", "global_step_4"]
    assert (root / "latest_checkpointed_iteration.txt").read_text() == "4"
    assert_loadable_hf_model(str(root / "global_step_4" / "huggingface"))
    assert (tmp_path / "checkpoints" / "qwen7b_sft" / "logs" / "wandb").is_dir()  # verl's default loggers
    first = losses(str(root / "logs" / "csv" / "metrics.csv"))
    assert sorted(first) == [0, 1, 2, 3]

    lit_sft(["fit", "--config", "native.yaml"], tmp_path)
    assert losses(str(tmp_path / "native" / "logs" / "csv" / "metrics.csv")) == first
    assert sorted(p.name for p in (tmp_path / "native").glob("global_step_*")) == [
        "global_step_3",
        "global_step_4",
    ]

    # trainer.resume_mode=auto (verl's default) continues from global_step_4: 2 more epochs, 4 more steps
    lit_sft(["verl", *words[:-4], "trainer.total_epochs=4", "trainer.default_local_dir=./checkpoints/qwen7b_sft",
             "trainer.logger=['console']"], tmp_path)  # fmt: skip
    assert (root / "latest_checkpointed_iteration.txt").read_text() == "8"


@pytest.mark.slow
def test_the_second_seed_command_runs_on_two_processes_with_sequence_parallelism_and_lora(
    tmp_path, verl_gsm8k, tiny_model_dir
) -> None:
    words = [
        f"data.train_files={verl_gsm8k}/train.parquet", f"data.val_files={verl_gsm8k}/test.parquet",
        "data.prompt_key=extra_info", "data.response_key=extra_info", "optim.lr=1e-4",
        "data.prompt_dict_keys=['question']", "+data.response_dict_keys=['answer']",
        "data.micro_batch_size_per_gpu=2", f"model.partial_pretrain={tiny_model_dir}",
        "trainer.default_local_dir=./save_ckpts", "trainer.project_name=gsm8k-sft",
        "trainer.experiment_name=gsm8k-sft-qwen-2.5-0.5b-instruct", "trainer.logger=['console']",
        "trainer.total_epochs=1", "trainer.total_training_steps=1",
        "model.lora_rank=32", "model.lora_alpha=16", "model.target_modules=all-linear", "model.strategy=fsdp",
        "ulysses_sequence_parallel_size=2", "use_remove_padding=true", "data.train_batch_size=4",
    ]  # fmt: skip
    run = lit_sft(["verl", *words], tmp_path, processes=2)
    assert "2 process(es), data-parallel 1: 4 rows per step = 2 x 1 x accumulation 2" in run.stderr
    root = tmp_path / "save_ckpts"
    assert sorted(p.name for p in root.glob("global_step_*")) == ["global_step_1"]
    metrics = str(root / "logs" / "csv" / "metrics.csv")
    assert sorted(losses(metrics)) == [0]
    with open(metrics, encoding="utf-8") as handle:  # verl validates at its last step
        assert len([row for row in csv.DictReader(handle) if row.get("val/loss")]) == 1
    assert_loadable_hf_model(str(root / "global_step_1" / "huggingface"))  # LoRA merged into the weights


@pytest.mark.slow
def test_run_sft_sh_runs_a_verl_recipe_yaml_into_checkpoint_dir_sft(
    tmp_path, verl_gsm8k, tiny_model_dir
) -> None:
    import yaml

    # A recipe's sft_trainer.yaml (graph-r1's run_sft.sh drives one): legacy keys, multi-turn data.
    recipe = {
        "data": {"train_batch_size": 4, "micro_batch_size_per_gpu": 1, "max_length": 1024, "truncation": "error",
                 "multiturn": {"enable": True, "messages_key": "messages", "tools_key": "tools"},
                 "train_files": f"{verl_gsm8k}/multiturn/train.parquet", "val_files": f"{verl_gsm8k}/multiturn/test.parquet"},
        "model": {"partial_pretrain": tiny_model_dir, "strategy": "fsdp2", "enable_gradient_checkpointing": True,
                  "lora_rank": 0, "lora_alpha": 16, "target_modules": "all-linear",
                  "fsdp_config": {"cpu_offload": False, "offload_params": False}},
        "optim": {"lr": 1e-5, "weight_decay": 0.01, "warmup_steps_ratio": 0.1, "lr_scheduler": "cosine"},
        "ulysses_sequence_parallel_size": 1, "use_remove_padding": False,
        "trainer": {"total_epochs": 1, "logger": ["console", "wandb"], "project_name": "graph-r1"},
    }  # fmt: skip
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "sft_trainer.yaml").write_text(yaml.safe_dump(recipe))
    env = {
        **os.environ, "NPROC_PER_NODE": "2", "NNODES": "1", "MASTER_PORT": "29541", "PYTHON": sys.executable,
        "CHECKPOINT_DIR": str(tmp_path / "ckpt"), "CONFIG_PATH": str(tmp_path / "config"), "CONFIG_NAME": "sft_trainer",
        "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    command = ["bash", os.path.join(ROOT, "scripts", "run_sft.sh"), "trainer.total_training_steps=2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    sft = tmp_path / "ckpt" / "sft"
    assert sorted(p.name for p in sft.iterdir()) == ["checkpoints", "logs", "wandb"]
    assert sorted(p.name for p in (sft / "checkpoints").glob("global_step_*")) == ["global_step_2"]
    assert sorted(losses(str(sft / "logs" / "csv" / "metrics.csv"))) == [0, 1]
    assert_loadable_hf_model(str(sft / "checkpoints" / "global_step_2" / "huggingface"))
