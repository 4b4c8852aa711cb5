"""``data.global_batch_size``: the accumulation follows from it, steps hold that many rows, and the last
incomplete step is dropped with ``drop_last`` (verl's semantics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback

from lit_sft import SFTModule
from lit_sft.data.sampler import MicroBatchSampler, micro_batches_per_step
from lit_sft.data.steps import accumulation_for
from lit_sft.errors import ConfigError
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl


def test_accumulation_is_the_global_batch_over_micro_batch_and_data_parallel_size() -> None:
    assert (
        accumulation_for(128, 4, 4) == 8
        and accumulation_for(256, 32, 4) == 2
        and accumulation_for(8, 8, 1) == 1
    )
    with pytest.raises(ConfigError, match=r"global_batch_size=100 does not divide by data.batch_size \(4\)"):
        accumulation_for(100, 4, 4)
    with pytest.raises(ConfigError, match="accumulate_grad_batches=3 disagrees"):
        accumulation_for(128, 4, 4, configured=3)
    assert accumulation_for(128, 4, 4, configured=8) == 8


class RowsPerStep(Callback):
    """The row indices of every micro-batch, grouped by the optimizer step they belong to."""

    def __init__(self) -> None:
        self.steps: dict[int, list[int]] = {}
        self.sequences: set[int] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        rows = (
            int((batch["position_ids"] == 0).sum())
            if "position_ids" in batch
            else batch["input_ids"].shape[0]
        )
        self.steps.setdefault(trainer.global_step, []).append(rows)
        self.sequences.add(batch["input_ids"].shape[0])


@pytest.mark.parametrize("packing", [False, True])
def test_a_fit_takes_global_batch_rows_per_step_and_drops_the_incomplete_last_step(tmp_path, packing) -> None:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(19))
    data = arithmetic_data(path, batch_size=2, global_batch_size=8, drop_last=True, packing=packing)
    module = SFTModule(model_config=tiny_model_config(), tokenizer_name_or_path="builtin:byte-chatml")
    rows = RowsPerStep()
    trainer = quiet_trainer(max_epochs=2, callbacks=[rows])
    trainer.fit(module, data)
    assert trainer.accumulate_grad_batches == 4
    # 19 rows: two whole steps of 8 per epoch, 3 rows dropped (verl: DistributedSampler + DataLoader drop_last)
    assert trainer.global_step == 4
    assert rows.steps == {step: [2, 2, 2, 2] for step in range(4)}  # packed micro-batches keep their 2 rows
    assert rows.sequences == ({1} if packing else {2})


def test_without_drop_last_the_last_step_takes_the_remaining_rows(tmp_path) -> None:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(19))
    data = arithmetic_data(path, batch_size=2, global_batch_size=8)
    module = SFTModule(model_config=tiny_model_config(), tokenizer_name_or_path="builtin:byte-chatml")
    rows = RowsPerStep()
    trainer = quiet_trainer(max_epochs=1, callbacks=[rows])
    trainer.fit(module, data)
    assert trainer.global_step == 3 and sum(rows.steps[2]) == 3


def test_an_explicit_accumulation_that_disagrees_is_an_error(tmp_path) -> None:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(8))
    data = arithmetic_data(path, batch_size=2, global_batch_size=8)
    module = SFTModule(model_config=tiny_model_config(), tokenizer_name_or_path="builtin:byte-chatml")
    with pytest.raises(
        ConfigError, match=r"accumulate_grad_batches=2 disagrees with data.global_batch_size=8"
    ):
        quiet_trainer(max_steps=1, accumulate_grad_batches=2).fit(module, data)


def test_drop_last_needs_whole_steps_of_rows(tmp_path) -> None:
    with pytest.raises(ConfigError, match="drop_last needs fixed-size micro-batches"):
        arithmetic_data("x.jsonl", drop_last=True, max_tokens_per_batch=512)


def test_a_token_budget_with_a_global_batch_keeps_the_rows_per_step_and_caps_each_micro_batch() -> None:
    # verl's use_dynamic_bsz: each step takes global_batch_size rows; each rank cuts its share by tokens.
    rng = np.random.default_rng(0)
    tokens, trained = rng.integers(20, 100, size=21), rng.integers(1, 20, size=21)
    probe = MicroBatchSampler(
        tokens, trained, 1, max_tokens_per_batch=128, packing=True, num_replicas=2, step_rows=8
    )
    per_step = micro_batches_per_step(probe, epochs=2)
    assert per_step > 1  # 4 rows of 20..100 tokens do not always fit in 128
    plans = [
        MicroBatchSampler(tokens, trained, 1, max_tokens_per_batch=128, packing=True, num_replicas=2, rank=rank,
                          accumulate_grad_batches=per_step, step_rows=8, seed=3)
        for rank in range(2)
    ]  # fmt: skip
    for plan in plans:
        plan.set_epoch(1)
    batches = [list(plan) for plan in plans]
    assert len(batches[0]) == len(batches[1]) == 2 * per_step  # 16 of 21 rows: 2 whole steps
    for step in range(2):
        micro = [b for rank in batches for b in rank[step * per_step : (step + 1) * per_step]]
        real = [i for b in micro if b.weight for i in b.indices]
        assert len(real) == len(set(real)) == 8
        assert all(int(tokens[list(b.indices)].sum()) <= 128 for b in micro)
        assert all(len(b.indices) == 1 for b in micro if not b.weight)  # fillers: one row, trains nothing
        assert {b.step_trained_tokens for b in micro} == {int(trained[real].sum())}
    every = [i for rank in batches for b in rank if b.weight for i in b.indices]
    assert len(every) == len(set(every)) == 16


def test_drop_last_plans_whole_steps_on_every_rank() -> None:
    tokens = torch.full((21,), 5).numpy()
    plans = [
        MicroBatchSampler(
            tokens, tokens, 2, num_replicas=2, rank=rank, accumulate_grad_batches=2, drop_last=True
        )
        for rank in range(2)
    ]
    seen = [index for plan in plans for batch in plan for index in batch.indices]
    assert len(plans[0]) == len(plans[1]) == 4 and len(seen) == len(set(seen)) == 16  # 2 steps x 8 rows
    assert all(batch.step_trained_tokens == 8 * 5 for plan in plans for batch in plan)
    with pytest.raises(ConfigError, match="fewer rows"):
        MicroBatchSampler(
            tokens[:5], tokens[:5], 2, num_replicas=2, accumulate_grad_batches=2, drop_last=True
        )
