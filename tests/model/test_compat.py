"""Checkpoints and configs from before the restructuring (flat loss options, lit_sft.model.module) still work."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import yaml

from lit_sft import SFTModule
from lit_sft.commands.fit import main
from lit_sft.errors import ConfigError
from lit_sft.model import LossOptions
from lit_sft.model.build import load_module
from lit_sft.model.loss import ChunkedLoss, PlainLoss
from tests.helpers import tiny_model_config

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "pre_restructure")
QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart.yaml")
PROBE = torch.tensor([[1, 40, 50, 60, 70, 80, 90, 100]])


def expected_logits(name: str) -> torch.Tensor:
    return torch.load(os.path.join(FIXTURES, "logits.pt"), weights_only=True)[name]


@pytest.mark.parametrize("name", ["full", "lora"])
def test_a_pre_restructure_checkpoint_loads_with_load_module_and_gives_its_logits(name: str) -> None:
    module = load_module(os.path.join(FIXTURES, f"{name}.ckpt")).eval()
    assert type(module) is SFTModule
    assert module.loss_options == LossOptions(implementation="chunked", chunk_size=4096)
    assert (module.lora is not None) == (name == "lora")
    with torch.no_grad():
        logits = module.model(input_ids=PROBE).logits
    torch.testing.assert_close(logits, expected_logits(name))


@pytest.mark.parametrize("name", ["full", "lora"])
def test_a_pre_restructure_checkpoint_loads_with_load_from_checkpoint(name: str) -> None:
    module = SFTModule.load_from_checkpoint(os.path.join(FIXTURES, f"{name}.ckpt"), map_location="cpu").eval()
    with torch.no_grad():
        logits = module.model(input_ids=PROBE).logits
    torch.testing.assert_close(logits, expected_logits(name))
    # Saved again, it carries the grouped options only.
    assert LossOptions(**module.hparams["loss"]) == LossOptions(implementation="chunked", chunk_size=4096)
    assert "implementation" in module.hparams["loss"]
    assert "loss_implementation" not in module.hparams and "loss_chunk_size" not in module.hparams


def test_the_old_flat_loss_options_still_work_and_say_the_new_name(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lit_sft"):
        old = SFTModule(
            model_config=tiny_model_config(),
            tokenizer_name_or_path="builtin:byte-chatml",
            loss_implementation="plain",
            loss_chunk_size=7,
        )
    assert old.loss_options == LossOptions(implementation="plain", chunk_size=7)
    assert "model.loss_implementation is now model.loss.implementation" in caplog.text
    assert "model.loss_chunk_size is now model.loss.chunk_size" in caplog.text
    old.configure_model()
    assert isinstance(old.token_loss, PlainLoss)


def test_old_and_new_loss_options_together_are_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.loss_chunk_size is now model\.loss\.chunk_size: set model\.loss only"
    ):
        SFTModule(model_config=tiny_model_config(), loss=LossOptions(), loss_chunk_size=8)


def test_a_yaml_with_the_old_flat_names_still_builds_the_same_model(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "old.yaml"
    old.write_text(
        yaml.safe_dump({"model": {"init_args": {"loss_implementation": "chunked", "loss_chunk_size": 16}}})
    )
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({"model": {"init_args": {"loss": {"chunk_size": 16}}}}))
    modules = [main(["--config", QUICKSTART, "--config", str(path)], run=False).model for path in (old, new)]
    assert (
        modules[0].loss_options
        == modules[1].loss_options
        == LossOptions(implementation="chunked", chunk_size=16)
    )
    modules[0].configure_model()
    assert isinstance(modules[0].token_loss, ChunkedLoss) and modules[0].token_loss.chunk_size == 16
