"""Optimizer steps from the data: the batch options checked, micro-batches per step for a global batch of
rows, or of tokens."""

from __future__ import annotations

from typing import Any

from lit_sft.data.sampler import MicroBatchSampler, micro_batches_per_step
from lit_sft.errors import ConfigError


def token_budget(
    batch_size: int,
    global_batch_size: int | None,
    drop_last: bool,
    max_tokens_per_batch: int | None,
    packing: bool,
    max_length: int | None,
) -> int | None:
    """The token budget of a micro-batch (None: a row count), the data module's batch options checked.

    Packing without a budget or a global batch packs up to ``max_length`` tokens; see `SFTDataModule`.
    """
    if batch_size < 1:
        raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
    if global_batch_size is not None and global_batch_size < 1:
        raise ConfigError(f"data.global_batch_size must be positive; got {global_batch_size}")
    if drop_last and max_tokens_per_batch is not None and global_batch_size is None:
        raise ConfigError(
            "data.drop_last needs fixed-size micro-batches (data.batch_size) or data.global_batch_size, "
            "not max_tokens_per_batch alone"
        )
    if packing and max_tokens_per_batch is None and global_batch_size is None:
        if max_length is None:
            raise ConfigError("data.packing needs data.max_tokens_per_batch (or data.max_length)")
        max_tokens_per_batch = max_length
    if max_tokens_per_batch is not None and max_length is not None and max_tokens_per_batch < max_length:
        raise ConfigError(
            f"data.max_tokens_per_batch ({max_tokens_per_batch}) must hold the longest row (max_length={max_length})"
        )
    return max_tokens_per_batch


def accumulation_for(
    global_batch_size: int, batch_size: int, data_parallel_size: int, configured: int = 1
) -> int:
    """Micro-batches per optimizer step on each rank so that a step sees ``global_batch_size`` rows.

    Args:
        global_batch_size: Rows per optimizer step over all data-parallel ranks.
        batch_size: Rows per micro-batch.
        data_parallel_size: Ranks that see different rows.
        configured: ``trainer.accumulate_grad_batches`` as configured (1, Lightning's default, means unset).
    """
    per_round = batch_size * data_parallel_size
    if global_batch_size % per_round:
        raise ConfigError(
            f"data.global_batch_size={global_batch_size} does not divide by data.batch_size ({batch_size}) x "
            f"data-parallel size ({data_parallel_size}) = {per_round}"
        )
    accumulation = global_batch_size // per_round
    if configured not in (1, accumulation):
        raise ConfigError(
            f"trainer.accumulate_grad_batches={configured} disagrees with data.global_batch_size="
            f"{global_batch_size} ({batch_size} rows x {data_parallel_size} ranks x {accumulation}): set one of them"
        )
    return accumulation


def token_step_accumulation(sampler: MicroBatchSampler, trainer: Any) -> int:
    """Micro-batches per step when micro-batches hold a token budget: the most any step of the run needs.

    Args:
        sampler: The training sampler, built with one micro-batch per step and the step's rows.
        trainer: The Lightning trainer (its ``max_epochs``/``max_steps`` bound the run).
    """
    if trainer.accumulate_grad_batches != 1:
        raise ConfigError(
            "trainer.accumulate_grad_batches is measured from the data with data.global_batch_size and "
            "data.max_tokens_per_batch: leave it unset"
        )
    steps_per_epoch = len(sampler) or 1
    epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else 1
    if trainer.max_steps is not None and trainer.max_steps > 0:
        needed = -(-trainer.max_steps // steps_per_epoch)
        epochs = min(epochs, needed) if trainer.max_epochs is not None and trainer.max_epochs > 0 else needed
    return micro_batches_per_step(sampler, epochs)
