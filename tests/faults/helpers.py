"""Running real `lit-sft fit` processes on a tiny config and reading back what they logged and saved.

Shared by the fault tests here and the launch and sharded-checkpoint tests in tests/distributed.
"""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys

import torch
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOTAL_STEPS = 12  # 24 rows, 4 per step: 6 steps per epoch


def config(
    root: str,
    every: int,
    callbacks: list | None = None,
    plugins: list | None = None,
    strategy: dict | None = None,
) -> str:
    values = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": TOTAL_STEPS,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "default_root_dir": root,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "${...default_root_dir}", "name": "logs"}},
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": "${....default_root_dir}/checkpoints", "every_n_train_steps": every, "save_top_k": -1, "save_last": True},
                },
                *(callbacks or []),
            ],
        },
        "model": {
            "class_path": "lit_sft.SFTModule",
            "init_args": {
                "tokenizer_name_or_path": "builtin:byte-chatml",
                "model_config": {
                    "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "attention_dropout": 0.1,
                },
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}},
            },
        },
        "data": {
            "class_path": "lit_sft.SyntheticGSM8KDataModule",
            "init_args": {"num_train": 24, "num_val": 0, "batch_size": 4, "data_dir": f"{root}/../data"},
        },
    }  # fmt: skip
    if plugins:
        values["trainer"]["plugins"] = plugins
    if strategy:
        values["trainer"]["strategy"] = strategy
        values["trainer"]["devices"] = 2
    path = os.path.join(root, "config.yaml")
    os.makedirs(root, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(values, handle)
    return path


def fit(config_path: str, *extra: str, processes: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
    ]
    command = [
        *(launcher if processes > 1 else [sys.executable]),
        "-m",
        "lit_sft",
        "fit",
        "--config",
        config_path,
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def losses(root: str) -> dict[int, float]:
    """train/loss by step over every run in ``root`` (a resumed run's values win)."""
    values: dict[int, float] = {}
    for path in sorted(glob.glob(os.path.join(root, "logs", "version_*", "metrics.csv"))):
        with open(path, encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("train/loss"):
                    values[int(row["step"]) + 1] = float(row["train/loss"])
    return values


def weights(root: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(root, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=False)[
        "state_dict"
    ]
