"""The VLM recipe (configs/vlm) through `lit-sft fit`, image resolution options, and the start-up checks
that pair image data with an image model."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch
from transformers import AutoModelForImageTextToText

from lit_sft import SFTDataModule, SFTModule
from lit_sft.commands.fit import main
from lit_sft.data.vision import VisionSFTDataModule
from lit_sft.errors import ConfigError
from lit_sft.model.vision import VisionSFTModule
from lit_sft.training.preflight import preflight
from tests.helpers import quiet_trainer, write_parquet
from tests.vision.helpers import colour_rows, image_png, vision_model_config

RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "vlm", "qwen2.5-vl-7b.yaml")
SMALLEST = {"max_pixels": 28 * 28 * 4}  # every image resized to 2x2 merged patches: 4 image tokens


def images_column_parquet(path: str, count: int) -> str:
    """The recipe's data shape: bare image parts in `messages`, the PNG bytes in an `images` column (in
    parquet, every message's content is a list of parts)."""
    rows = []
    for row in colour_rows(count, os.path.join(os.path.dirname(path), "unused")):
        colour = row["messages"][1]["content"]
        row["messages"][0]["content"][0] = {"type": "image"}
        row["messages"][1]["content"] = [{"type": "text", "text": colour}]
        rows.append({**row, "images": [image_png(colour, (84, 84))]})
    return write_parquet(path, rows)


def recipe_args(vlm_dir: str, tmp_path, *extra: str) -> list[str]:
    return [
        "--config", RECIPE,
        "--model.init_args.model_name_or_path", vlm_dir,
        "--model.init_args.dtype", "float32",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.precision", "32-true",
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.train_files", images_column_parquet(str(tmp_path / "train.parquet"), 16),
        "--data.init_args.image_root", str(tmp_path),
        "--data.init_args.val_ratio", "0.25",
        "--data.init_args.num_workers", "0",
        "--data.init_args.cache_dir", str(tmp_path / "cache"),
        *extra,
    ]  # fmt: skip


def test_the_vlm_recipe_builds_a_lora_vision_run_on_a_stand_in_model(vlm_dir, tmp_path) -> None:
    cli = main(recipe_args(vlm_dir, tmp_path), run=False)
    assert isinstance(cli.model, VisionSFTModule) and isinstance(cli.datamodule, VisionSFTDataModule)
    assert cli.datamodule.tokenizer_name_or_path == vlm_dir  # the processor comes from the model's path
    assert cli.datamodule.processor_kwargs == {"min_pixels": 3136, "max_pixels": 1003520}
    assert cli.model.lora.target_modules == "all-linear" and not cli.model.train_vision_tower
    cli.model.configure_model()
    trainable = [name for name, parameter in cli.model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name and "visual" not in name for name in trainable)
    cli.datamodule.setup("fit")
    assert (cli.datamodule.summaries["train"].kept, cli.datamodule.summaries["val"].kept) == (12, 4)


def test_the_vlm_recipe_trains_and_exports_the_processor_it_encoded_with(vlm_dir, tmp_path) -> None:
    small = json.dumps({"max_pixels": SMALLEST["max_pixels"], "min_pixels": 3136})
    cli = main(
        ["fit", *recipe_args(vlm_dir, tmp_path, "--trainer.max_steps", "2", "--trainer.accumulate_grad_batches",
                             "1", "--data.init_args.processor_kwargs", small)]
    )  # fmt: skip
    assert cli.trainer.global_step == 2
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch["image_grid_thw"].prod(-1).tolist() == [16, 16]  # 84x84 images held to 4 merged patches
    exported = tmp_path / "run" / "hf" / "final"
    with open(exported / "preprocessor_config.json", encoding="utf-8") as handle:
        assert json.load(handle)["size"]["longest_edge"] == SMALLEST["max_pixels"]
    model = AutoModelForImageTextToText.from_pretrained(exported)
    assert not any("lora" in name for name in model.state_dict())
    assert os.path.isfile(exported / "adapter" / "adapter_config.json")
    checkpoint = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert checkpoint["hyper_parameters"]["processor_kwargs"] == json.loads(small)


def pairing_problems(model: Any, datamodule: Any, tmp_path) -> str:
    with pytest.raises(ConfigError) as raised:
        preflight(quiet_trainer(default_root_dir=str(tmp_path)), model, datamodule)
    return str(raised.value)


def test_image_data_and_an_image_model_must_come_together(processor_dir, tmp_path) -> None:
    train = images_column_parquet(str(tmp_path / "train.parquet"), 2)
    vision_data = VisionSFTDataModule(processor_name_or_path=processor_dir, train_files=train)
    vision_model = VisionSFTModule(processor_name_or_path=processor_dir, model_config=vision_model_config())
    text_data = SFTDataModule(tokenizer_name_or_path="builtin:byte-chatml", train_files=train)
    assert "set data.class_path to lit_sft.VisionSFTDataModule" in pairing_problems(
        vision_model, text_data, tmp_path
    )
    text_model = SFTModule(tokenizer_name_or_path="builtin:byte-chatml", model_config={"model_type": "qwen2"})
    assert "set model.class_path to lit_sft.VisionSFTModule" in pairing_problems(
        text_model, vision_data, tmp_path
    )

    vision_model.processor_kwargs = {"max_pixels": 3136}
    assert "differ from data.processor_kwargs" in pairing_problems(vision_model, vision_data, tmp_path)
    missing = VisionSFTDataModule(
        processor_name_or_path=processor_dir, train_files=train, image_root="~/no-such"
    )
    vision_model.processor_kwargs = {}
    problems = pairing_problems(vision_model, missing, tmp_path)
    assert f"data.image_root: {os.path.expanduser('~/no-such')}: no such directory" in problems
