"""Exact resume: a run stopped at a checkpoint and resumed equals an uninterrupted one, step for step."""

from __future__ import annotations

import hashlib
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_sft import SFTModule
from lit_sft.data.mixture import DataSource
from lit_sft.model import LoraOptions
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl

TOTAL_STEPS = 20  # 4 rows per micro-batch, 2 micro-batches per step: 8 rows per step


class Record(Callback):
    """Per optimizer step: the logged loss; per micro-batch: a fingerprint of its rows."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.batches: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(hashlib.sha1(batch["input_ids"].numpy().tobytes()).hexdigest()[:12])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "train/loss" in trainer.callback_metrics:
            self.losses[trainer.global_step] = float(trainer.callback_metrics["train/loss"])


class StopAt(Callback):
    """Ends the run after ``step`` optimizer steps, as an interruption would (same config, same schedule)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def run(
    tmp_path,
    data_kwargs: dict,
    ckpt_path: str | None = None,
    stop_at: int | None = None,
    lora=None,
    **module_kwargs,
):
    seed_everything(0)
    module = SFTModule(
        model_config=tiny_model_config(attention_dropout=0.1),  # dropout: the RNG state must resume too
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=3e-3),
        lora=lora,
        **module_kwargs,
    )
    data_kwargs = dict(data_kwargs)
    data = arithmetic_data(data_kwargs.pop("train_files", str(tmp_path / "train.jsonl")), **data_kwargs)
    record = Record()
    callbacks = [record]
    if stop_at:
        checkpoint = ModelCheckpoint(
            dirpath=str(tmp_path / "ckpt"), every_n_train_steps=stop_at, save_last=True
        )
        callbacks += [checkpoint, StopAt(stop_at)]
    trainer = quiet_trainer(
        max_steps=TOTAL_STEPS,
        accumulate_grad_batches=2,
        callbacks=callbacks,
        enable_checkpointing=bool(stop_at),
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return record, module


# Run A trains 20 steps; run B trains 10, stops, and resumes to 20. With 64 rows an epoch is 8 steps (step
# 10 is mid-epoch); with 40 rows it is 5 steps (step 10 ends an epoch).
@pytest.mark.parametrize("rows", [64, 40], ids=["mid-epoch", "epoch-boundary"])
@pytest.mark.parametrize(
    "data_kwargs",
    [{"batch_size": 4}, {"packing": True, "max_length": 128, "max_tokens_per_batch": 256}],
    ids=["padded", "packed"],
)
def test_resumed_run_equals_uninterrupted_run(tmp_path, rows: int, data_kwargs: dict) -> None:
    stop_at = 10
    write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(rows))
    full, full_module = run(tmp_path, data_kwargs)
    first, _ = run(tmp_path, data_kwargs, stop_at=stop_at)
    resumed, resumed_module = run(tmp_path, data_kwargs, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))

    assert sorted(full.losses) == list(range(1, TOTAL_STEPS + 1))
    assert first.batches == full.batches[: len(first.batches)]
    # The resumed run starts with exactly the next micro-batch, and continues the same loss curve.
    assert resumed.batches == full.batches[len(first.batches) :]
    assert {step: full.losses[step] for step in resumed.losses} == resumed.losses
    assert sorted(resumed.losses) == list(range(stop_at + 1, TOTAL_STEPS + 1))
    for (name, parameter), (_, other) in zip(
        full_module.named_parameters(), resumed_module.named_parameters(), strict=True
    ):
        assert torch.equal(parameter, other), name


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_a_weighted_mixture_resumes_exactly(tmp_path, packing: bool) -> None:
    """Each epoch draws its own rows from the sources: a resumed run draws the same ones (padded, 64 rows
    are 8 steps an epoch: step 10 is mid-way through the second epoch's draw)."""
    few = write_jsonl(str(tmp_path / "few.jsonl"), arithmetic_rows(16))
    many = write_jsonl(str(tmp_path / "many.jsonl"), arithmetic_rows(48, start=100))
    data_kwargs = {
        "train_files": [DataSource(few, weight=3), DataSource(many, weight=1)],
        "batch_size": 4,
        **({"packing": True, "max_length": 128, "max_tokens_per_batch": 256} if packing else {}),
    }
    full, full_module = run(tmp_path, data_kwargs)
    first, _ = run(tmp_path, data_kwargs, stop_at=10)
    resumed, resumed_module = run(tmp_path, data_kwargs, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert first.batches + resumed.batches == full.batches
    assert {step: full.losses[step] for step in resumed.losses} == resumed.losses
    for (name, parameter), (_, other) in zip(
        full_module.named_parameters(), resumed_module.named_parameters(), strict=True
    ):
        assert torch.equal(parameter, other), name


def test_lora_run_resumes_exactly(tmp_path) -> None:
    write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(64))
    lora, data_kwargs = LoraOptions(r=4, alpha=8), {"batch_size": 4}
    full, full_module = run(tmp_path, data_kwargs, lora=lora)
    run(tmp_path, data_kwargs, stop_at=10, lora=lora)
    resumed, resumed_module = run(
        tmp_path, data_kwargs, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), lora=lora
    )
    assert {step: full.losses[step] for step in resumed.losses} == resumed.losses
    for (name, parameter), (_, other) in zip(
        full_module.named_parameters(), resumed_module.named_parameters(), strict=True
    ):
        assert torch.equal(parameter, other), name


def test_a_neftune_run_resumes_exactly(tmp_path) -> None:
    """NEFTune's noise comes from the checkpointed RNG: the resumed run draws the uninterrupted run's noise."""
    write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(64))
    data_kwargs = {"batch_size": 4}
    full, full_module = run(tmp_path, data_kwargs, neftune_noise_alpha=5.0)
    noiseless, _ = run(tmp_path, data_kwargs)
    assert noiseless.losses[TOTAL_STEPS] != full.losses[TOTAL_STEPS]  # the noise does change training
    run(tmp_path, data_kwargs, stop_at=10, neftune_noise_alpha=5.0)
    resumed, resumed_module = run(
        tmp_path, data_kwargs, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), neftune_noise_alpha=5.0
    )
    assert {step: full.losses[step] for step in resumed.losses} == resumed.losses
    for (name, parameter), (_, other) in zip(
        full_module.named_parameters(), resumed_module.named_parameters(), strict=True
    ):
        assert torch.equal(parameter, other), name
