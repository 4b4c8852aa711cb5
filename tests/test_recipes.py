"""Every run in configs/ trains one optimizer step on a CPU, as written.

Each YAML's header names the command that runs it (``lit-sft fit --config A.yaml [--config B.yaml]``); that
composition runs here with only four things swapped: the machine (one CPU process), the model (a tiny
stand-in saved with ``save_pretrained``), the data (small local files of the shape the recipe reads) and
the run length (one optimizer step, one validation batch, a few GSM8K questions). Everything else — precision,
the fused optimizer, gradient clipping, accumulation, LoRA, QLoRA, the strategy, loggers and callbacks — is
the recipe's own, so a combination that cannot take its first step on the GPU machine fails here first.
"""

from __future__ import annotations

import glob
import itertools
import math
import os
import shlex
from typing import Any

import pytest
import torch
import yaml

from lit_sft.commands import prepare
from lit_sft.commands.fit import main
from tests.helpers import write_parquet

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
ROOT = os.path.abspath(os.path.join(CONFIGS, ".."))
ALL = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))


def composition(path: str) -> list[str]:
    """The configs, in order, that the header command of ``path`` passes to ``lit-sft fit``."""
    with open(path, encoding="utf-8") as handle:
        words = shlex.split(handle.readline().lstrip("#"))
    assert words[:2] == ["lit-sft", "fit"], f"{path}: the first line is not a `lit-sft fit` command"
    return [os.path.join(ROOT, value) for flag, value in itertools.pairwise(words) if flag == "--config"]


def merged(paths: list[str]) -> dict[str, Any]:
    """The composed values, merged as the parser merges them (later files win key by key)."""

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        for key, value in extra.items():
            base[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
        return base

    values: dict[str, Any] = {}
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            merge(values, yaml.safe_load(handle))
    return values


@pytest.fixture(scope="module")
def recipe_files(gsm8k_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """GSM8K as `lit-sft prepare gsm8k` writes it (verl's format), and a messages parquet with tools."""
    out = tmp_path_factory.mktemp("recipe-data")
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
        for i in range(64)
    ]
    return {
        "gsm8k": str(out / "gsm8k" / "test.parquet"),
        "messages": write_parquet(str(out / "chat.parquet"), chat),
    }


@pytest.fixture(scope="module")
def vision_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny random Qwen2-VL with its processor, and the VLM recipe's data shape: bare image parts in
    `messages`, PNG bytes in an `images` column."""
    from lit_sft.hub import save_processor
    from lit_sft.model.vision import VisionSFTModule
    from tests.vision.helpers import (
        colour_rows,
        image_png,
        load_saved_processor,
        make_processor,
        vision_model_config,
    )

    root = tmp_path_factory.mktemp("recipe-vision")
    model_dir = str(root / "model")
    torch.manual_seed(0)
    module = VisionSFTModule(processor_name_or_path=str(root), model_config=vision_model_config())
    module._processor = make_processor()
    module.build_model().save_pretrained(model_dir)
    save_processor(module.processor, model_dir)
    assert load_saved_processor(model_dir) is not None
    rows = []
    for row in colour_rows(16, str(root / "unused")):
        colour = row["messages"][1]["content"]
        row["messages"][0]["content"][0] = {"type": "image"}
        row["messages"][1]["content"] = [{"type": "text", "text": colour}]
        rows.append({**row, "images": [image_png(colour, (84, 84))]})
    return {"model": model_dir, "train": write_parquet(str(root / "train.parquet"), rows), "root": str(root)}


def shortened(values: dict[str, Any]) -> None:
    """Run length only: the GSM8K evaluations ask a few questions for a few tokens."""
    for callback in values.get("trainer", {}).get("callbacks") or []:
        if callback["class_path"].endswith("GSM8KEvaluation"):
            callback["init_args"].update(max_samples=4, max_new_tokens=8, batch_size=4)


def with_local_data(values: dict[str, Any], files: dict[str, str]) -> None:
    """Data only: every file a recipe reads becomes a small local file of the same format."""
    init_args = values.get("data", {}).get("init_args", {})
    if isinstance(init_args.get("train_files"), list):  # a mixture: each source by its own format
        for source in init_args["train_files"]:
            source["files"] = files["messages" if source.get("format") == "messages" else "gsm8k"]
            # Per source: max_train_samples would take the first source's rows only.
            source["max_samples"] = 32
    elif "train_files" in init_args:
        init_args["train_files"] = files["messages" if init_args.get("format") == "messages" else "gsm8k"]
    if "val_files" in init_args:
        init_args["val_files"] = (
            init_args["train_files"] if isinstance(init_args["train_files"], str) else files["gsm8k"]
        )


def recipe_run(path: str, tmp_path, files: dict[str, str], model_dir: str) -> list[str]:
    """The arguments of ``lit-sft fit`` for the header composition of ``path``, with machine, model, data and
    run length swapped."""
    args = ["fit"]
    for index, config in enumerate(composition(path)):
        with open(config, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
        shortened(values)
        with_local_data(values, files)
        copy = tmp_path / f"{index}-{os.path.basename(config)}"
        with open(copy, "w", encoding="utf-8") as handle:
            yaml.safe_dump(values, handle)
        args += ["--config", str(copy)]
    values = merged(composition(path))
    model_args = values["model"].get("init_args", {})
    data_args = values["data"].get("init_args", {})
    accumulate = int(values["trainer"].get("accumulate_grad_batches", 1))
    args += [
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.max_steps", "1",
        "--trainer.max_epochs", "1",
        "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", str(accumulate),  # validate right after the step
        "--trainer.check_val_every_n_epoch", "null",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    if "model_name_or_path" in model_args:
        args += ["--model.init_args.model_name_or_path", model_dir]
    if "num_train" in data_args:  # the generated GSM8K-format problems: just enough of them
        args += [
            "--data.init_args.num_train",
            str(accumulate * data_args["batch_size"]),
            "--data.init_args.num_val",
            "4",
        ]
    else:
        # The stand-in tokenizers are byte-level: texts are about 4x as many tokens as with the models' own.
        if not isinstance(data_args["train_files"], list):
            args += ["--data.init_args.max_train_samples", str(2 * accumulate * data_args["batch_size"])]
        args += ["--data.init_args.max_length", str(4 * int(data_args["max_length"]))]
        if "val_files" in data_args:
            args += ["--data.init_args.max_val_samples", "8"]
    if "vlm" in path:
        args += ["--data.init_args.image_root", files["root"]]
    return args


def run_and_check(path: str, args: list[str], tmp_path) -> None:
    """Run ``lit-sft fit``; check the step was taken and validated, with the recipe's own training options."""
    cli = main(args)
    assert cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"])) and math.isfinite(float(metrics["val/loss"]))
    values = merged(composition(path))
    trainer = values["trainer"]
    assert cli.trainer.precision == trainer.get("precision", "32-true")
    assert cli.trainer.gradient_clip_val == trainer.get("gradient_clip_val")
    assert cli.trainer.accumulate_grad_batches == trainer.get("accumulate_grad_batches", 1)
    optimizer = values["model"]["init_args"].get("optimizer", {}).get("init_args", {})
    assert bool(cli.trainer.optimizers[0].defaults.get("fused")) == bool(optimizer.get("fused"))
    if any(type(callback).__name__ == "ModelCheckpoint" for callback in cli.trainer.callbacks):
        assert glob.glob(str(tmp_path / "run" / "**" / "*.ckpt"), recursive=True)


# FSDP1 cannot run on a machine without an accelerator: Lightning's FSDPStrategy passes device_id=None on a
# CPU and torch's FullyShardedDataParallel then raises "FSDP needs a non-CPU accelerator device". Its
# clipping (the part of the recipe that differs from FSDP2's) is checked in tests/training/test_clipping.py.
FSDP1_ON_CPU = pytest.mark.skip(
    reason="FSDP1 refuses a CPU-only machine ('FSDP needs a non-CPU accelerator device')"
)
TEXT_RUNS = [
    pytest.param(path, marks=FSDP1_ON_CPU) if path.endswith(os.path.join("strategies", "fsdp.yaml")) else path
    for path in ALL
    if "vlm" not in path
]
VISION_RUNS = [path for path in ALL if "vlm" in path]


def run_id(path: str) -> str:
    return os.path.relpath(path, CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("path", TEXT_RUNS, ids=run_id)
def test_every_recipe_takes_one_step_on_a_cpu_as_written(
    path: str, tiny_model_dir: str, recipe_files: dict[str, str], tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # loggers that write relative to the working directory
    run_and_check(path, recipe_run(path, tmp_path, recipe_files, tiny_model_dir), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("path", VISION_RUNS, ids=run_id)
def test_the_vision_recipe_takes_one_step_on_a_cpu_as_written(
    path: str, vision_files: dict[str, str], tmp_path, monkeypatch
) -> None:
    import transformers

    from tests.vision.helpers import load_saved_processor

    # Qwen2-VL's AutoProcessor needs torchvision for its video processor (absent here; images do not use it).
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", staticmethod(load_saved_processor))
    monkeypatch.chdir(tmp_path)
    files = {"gsm8k": vision_files["train"], "messages": vision_files["train"], "root": vision_files["root"]}
    run_and_check(path, recipe_run(path, tmp_path, files, vision_files["model"]), tmp_path)
