"""The run summary shows the token accuracy and entropy next to the loss, for training and validation."""

from __future__ import annotations

from functools import partial

import torch
from lightning.pytorch import seed_everything

from lit_sft import SFTModule
from lit_sft.callbacks import RunSummary
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl


def test_the_summary_lists_token_accuracy_and_entropy(tmp_path) -> None:
    seed_everything(0)
    module = SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
    )
    data = arithmetic_data(
        write_jsonl(str(tmp_path / "t.jsonl"), arithmetic_rows(12)), batch_size=4, val_ratio=0.3
    )
    summary = RunSummary()
    trainer = quiet_trainer(
        max_steps=3,
        callbacks=[summary],
        limit_val_batches=None,
        val_check_interval=3,
        check_val_every_n_epoch=None,
    )
    trainer.fit(module, datamodule=data)
    lines = "\n".join(summary.lines(trainer))
    last_accuracy = float(trainer.callback_metrics["train/token_accuracy"])
    assert f"-> {last_accuracy:.1%} (step 3)" in lines
    assert f"-> {float(trainer.callback_metrics['train/entropy']):.4f} (step 3)" in lines
    assert [name for name, _ in sorted(summary.train_history.items())] == [
        "train/entropy",
        "train/loss",
        "train/token_accuracy",
    ]
    assert len(summary.train_history["train/token_accuracy"]) == 3
    assert "val/token_accuracy: first" in lines and "; best" in lines.split("val/token_accuracy")[1]
    entropy_line = next(line for line in summary.lines(trainer) if line.startswith("val/entropy"))
    assert "best" not in entropy_line

    restored = RunSummary()
    restored.load_state_dict(summary.state_dict())
    assert restored.train_history == summary.train_history
    old = RunSummary()
    old.load_state_dict({"history": {}, "train_losses": [[1, 2.5]]})  # a checkpoint from before
    assert old.train_losses == [(1, 2.5)]
