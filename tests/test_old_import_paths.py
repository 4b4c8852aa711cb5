"""Configs, scripts and notebooks written before the restructuring name classes by their old import paths
(``lit_sft.strategies.FSDP2Strategy``, ``lit_sft.checkpoint_io.AtomicCheckpointIO``, ``lit_sft.cli``):
they still build the same objects. (Old checkpoints: tests/model/test_compat.py.)"""

from __future__ import annotations

import os

import yaml
from jsonargparse import ArgumentParser
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.strategies import Strategy

from lit_sft.commands import fit
from lit_sft.training.checkpoint_io import AtomicCheckpointIO
from lit_sft.training.strategies import FSDP2Strategy, FSDPStrategyPreset

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def build(key: str, kind: type, value: dict) -> object:
    parser = ArgumentParser()
    parser.add_argument(f"--{key}", type=kind | str)
    return getattr(parser.instantiate_classes(parser.parse_object({key: value})), key)


def test_old_strategy_and_checkpoint_io_class_paths_build_the_moved_classes() -> None:
    for name, cls, preset in (
        ("FSDP2Strategy", FSDP2Strategy, "fsdp2.yaml"),
        ("FSDPStrategyPreset", FSDPStrategyPreset, "fsdp.yaml"),
    ):
        with open(os.path.join(ROOT, "configs", "strategies", preset), encoding="utf-8") as handle:
            init_args = yaml.safe_load(handle)["trainer"]["strategy"].get("init_args", {})
        built = build(
            "strategy", Strategy, {"class_path": f"lit_sft.strategies.{name}", "init_args": init_args}
        )
        assert type(built) is cls, name
    plugin = build("plugin", CheckpointIO, {"class_path": "lit_sft.checkpoint_io.AtomicCheckpointIO"})
    assert type(plugin) is AtomicCheckpointIO


def test_old_cli_module_is_the_command() -> None:
    from lit_sft import cli

    assert cli.main is fit.main and cli.entry_point is fit.entry_point and cli.SFTCLI is fit.SFTCLI
