"""The progress bar counts optimizer steps when max_steps bounds the run (not ``Epoch 0/-2``)."""

from __future__ import annotations

import os
from functools import partial
from types import SimpleNamespace

import torch
from lightning.pytorch.callbacks import ProgressBar

from lit_sft import SFTModule
from lit_sft.callbacks import StepProgressBar, StepRichProgressBar
from lit_sft.callbacks.progress import train_description
from lit_sft.commands.fit import main
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl

QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart.yaml")


def test_description_names_the_step_and_the_total_under_max_steps() -> None:
    def trainer(**values):
        return SimpleNamespace(**{"current_epoch": 0, "global_step": 0, **values})

    assert train_description(trainer(global_step=12, max_steps=800, max_epochs=-1)) == "step 12/800"
    assert train_description(trainer(current_epoch=2, global_step=30, max_steps=800, max_epochs=-1)) == (
        "Epoch 2, step 30/800"
    )
    assert train_description(trainer(current_epoch=1, max_steps=-1, max_epochs=3)) == "Epoch 1/2"
    assert "-2" not in train_description(trainer(max_steps=5, max_epochs=-1))


def fit_three_steps(tmp_path, bar) -> None:
    module = SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
    )
    data = arithmetic_data(write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(8)), batch_size=2)
    trainer = quiet_trainer(max_steps=3, accumulate_grad_batches=2, enable_progress_bar=True, callbacks=[bar])
    trainer.fit(module, datamodule=data)
    # Eight rows in micro-batches of two, two per optimizer step: two steps per epoch, so the third step
    # is in the second epoch. The bar counts optimizer steps, not micro-batches.
    assert trainer.global_step == 3


def test_the_tqdm_bar_shows_the_last_optimizer_step_of_a_max_steps_run(tmp_path) -> None:
    bar = StepProgressBar()
    fit_three_steps(tmp_path, bar)
    assert bar.train_progress_bar.desc.startswith("Epoch 1, step 3/3"), bar.train_progress_bar.desc


def test_the_rich_bar_shows_the_last_optimizer_step_of_a_max_steps_run(tmp_path) -> None:
    bar = StepRichProgressBar(leave=True)
    fit_three_steps(tmp_path, bar)
    descriptions = [task.description for task in bar.progress.tasks]
    assert any(text.startswith("Epoch 1, step 3/3") for text in descriptions), descriptions
    assert not any("-2" in text for text in descriptions)


def test_lit_sft_fit_uses_the_step_bar_unless_the_bar_is_off(tmp_path) -> None:
    args = ["--config", QUICKSTART, "--trainer.default_root_dir", str(tmp_path)]
    cli = main([*args, "--trainer.max_steps", "3"], run=False)
    # Lightning's default is its rich bar when rich is installed (it is, with jsonargparse), else TQDM.
    assert type(cli.trainer.progress_bar_callback) in (StepProgressBar, StepRichProgressBar)
    assert sum(isinstance(c, ProgressBar) for c in cli.trainer.callbacks) == 1
    cli = main([*args, "--trainer.enable_progress_bar", "false"], run=False)
    assert cli.trainer.progress_bar_callback is None
