"""The micro-batch plan: which rows form each micro-batch, on which rank, in which optimizer step.

Micro-batches are ``batch_size`` rows (shuffled every epoch), or length-grouped batches under a token
budget, or packed sequences under a token budget (see `lit_sft.data.grouping`; their grouping is fixed
and their order shuffled every epoch).

The plan is computed identically on every rank from the row lengths and a seed, so each micro-batch can
carry the number of trained tokens of its *whole optimizer step* (all micro-batches, all ranks) without
any communication. The loss divides by that number, which makes it a true per-token mean over the
optimizer step: every trained token weighs the same whatever the micro-batch size, gradient
accumulation or world size.

With a weighted mixture (`lit_sft.data.mixture`) the rows of each epoch are chosen per epoch
(``epoch_rows``) and grouped or packed per epoch. Every epoch then has the first epoch's number of
micro-batches: under a token budget a later epoch's rows may pack into fewer (it gets weight-0 filler
micro-batches at its end) or more (its last packs are left out), which keeps Lightning's epoch length, the
learning-rate schedule and resume positions valid.

With ``step_rows`` and a token budget (verl's ``use_dynamic_bsz``), each optimizer step takes ``step_rows``
shuffled rows, as with fixed-size micro-batches, and each rank packs its share into micro-batches under the
budget; every step then has the same number of micro-batches on every rank (`micro_batches_per_step`), a
step that needs fewer getting one-row filler micro-batches of weight 0.

Every rank gets the same number of micro-batches; when the rows do not divide evenly, the last ranks get
padding micro-batches whose labels are all masked (weight 0), so no rank waits for another and no row is
duplicated in the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler

from lit_sft.data.grouping import fixed_size_batches, pack_best_fit_decreasing, token_budget_batches
from lit_sft.errors import ConfigError


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of the plan.

    Attributes:
        indices: Row indices into the tokenized dataset.
        step_trained_tokens: Trained tokens in all micro-batches of its optimizer step, on all ranks.
        step_tokens: All tokens (trained or not, no padding) of the same.
        weight: 1, or 0 for a padding micro-batch that only keeps ranks in step.
    """

    indices: tuple[int, ...]
    step_trained_tokens: int
    step_tokens: int
    weight: int = 1


class MicroBatchSampler(DistributedSampler):
    """Yields this rank's `MicroBatch` es for one epoch, seeded, deterministic and resumable.

    It subclasses ``DistributedSampler`` only so that Lightning, which replaces samplers that are not
    distributed under DDP/FSDP, leaves it alone: it shards rows across ranks itself.

    Args:
        num_tokens: Tokens of each row.
        num_trained: Trained tokens of each row.
        batch_size: Rows per micro-batch (when ``max_tokens_per_batch`` is None).
        max_tokens_per_batch: A token budget per micro-batch: with ``packing``, the length of each packed
            sequence; without, rows x longest row of each length-grouped padded batch.
        packing: Pack rows best-fit-decreasing into ``max_tokens_per_batch`` (padding-free).
        shuffle: Shuffle each epoch (seeded by ``seed`` and the epoch).
        seed: The shuffling seed; every rank must use the same.
        num_replicas: Number of data-parallel ranks.
        rank: This rank.
        accumulate_grad_batches: Micro-batches per optimizer step on each rank.
        drop_last: Drop the rows of each epoch's last optimizer step when they do not fill it (fixed-size
            micro-batches only).
        epoch_rows: ``epoch -> row indices`` (repeats allowed) when not every row is used once an epoch
            (weighted mixtures); deterministic in the epoch, so resuming stays exact.
        step_rows: Rows per optimizer step over all ranks, each rank's share split under
            ``max_tokens_per_batch`` into ``accumulate_grad_batches`` micro-batches (the last rows of an
            epoch that do not fill a step are dropped).
    """

    def __init__(
        self,
        num_tokens: np.ndarray,
        num_trained: np.ndarray,
        batch_size: int | None = None,
        *,
        max_tokens_per_batch: int | None = None,
        packing: bool = False,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        accumulate_grad_batches: int = 1,
        drop_last: bool = False,
        epoch_rows: Callable[[int], np.ndarray] | None = None,
        step_rows: int | None = None,
    ) -> None:
        if max_tokens_per_batch is None and (batch_size is None or batch_size < 1):
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if packing and max_tokens_per_batch is None:
            raise ValueError("packing needs max_tokens_per_batch")
        if len(num_tokens) == 0:
            raise ValueError("cannot sample from an empty dataset")
        self.num_tokens = np.asarray(num_tokens, dtype=np.int64)
        self.num_trained = np.asarray(num_trained, dtype=np.int64)
        # What DistributedSampler's attributes refer to (typed there as a Dataset; only its length is read).
        self.dataset = self.num_tokens  # type: ignore[assignment]
        self.num_replicas, self.rank = num_replicas, rank
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.max_tokens_per_batch, self.packing = max_tokens_per_batch, packing
        self.accumulate_grad_batches = accumulate_grad_batches
        self.drop_last = drop_last
        self.epoch = 0
        self._start = 0  # micro-batches of the current epoch to skip (set when resuming)
        self.epoch_rows = epoch_rows
        self.step_rows = step_rows
        if step_rows is not None:
            self._groups = None
            self._rows = _whole_steps(len(self.num_tokens), step_rows, num_replicas, max_tokens_per_batch)
            if epoch_rows is not None:
                raise ConfigError(
                    "a weighted mixture needs data.batch_size micro-batches, not a token budget per step"
                )
            num_global = self._rows // step_rows * accumulate_grad_batches * num_replicas
        elif epoch_rows is not None:
            self._groups = None
            num_global = len(self.micro_batches(0))
        elif max_tokens_per_batch is None:
            assert batch_size is not None  # checked above
            self._groups = None
            self._rows = len(self.num_tokens)
            if drop_last:  # whole optimizer steps only
                per_step = batch_size * num_replicas * accumulate_grad_batches
                self._rows -= self._rows % per_step
                if not self._rows:
                    raise ConfigError(
                        f"data.drop_last: fewer rows ({len(self.num_tokens)}) than one optimizer step ({per_step})"
                    )
            num_global = -(-self._rows // batch_size)
        elif packing:
            self._groups = pack_best_fit_decreasing(self.num_tokens, max_tokens_per_batch)
            num_global = len(self._groups)
        else:
            self._groups = token_budget_batches(self.num_tokens, max_tokens_per_batch)
            num_global = len(self._groups)
        self.num_samples = -(-num_global // num_replicas)  # micro-batches per rank
        self.total_size = self.num_samples * num_replicas

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order `__iter__` yields (Lightning calls this each epoch)."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def _order(self, epoch: int) -> np.ndarray:
        count = len(self.num_tokens)
        return self._rng(epoch).permutation(count) if self.shuffle else np.arange(count)

    def step_shares(self, epoch: int) -> list[list[list[np.ndarray]]]:
        """With ``step_rows``: for each step of ``epoch``, for each rank, its rows packed under the budget."""
        assert self.step_rows is not None and self.max_tokens_per_batch is not None  # step mode only
        group = pack_best_fit_decreasing if self.packing else token_budget_batches
        order, steps = self._order(epoch)[: self._rows], []
        for start in range(0, self._rows, self.step_rows):
            shares = np.split(order[start : start + self.step_rows], self.num_replicas)
            steps.append(
                [
                    [share[m] for m in group(self.num_tokens[share], self.max_tokens_per_batch)]
                    for share in shares
                ]
            )
        return steps

    def _step_chunks(self, epoch: int) -> tuple[list[np.ndarray], list[int]]:
        """The micro-batches of ``epoch`` in step mode, fillers (weight 0) included."""
        chunks, weights = [], []
        per_step = self.accumulate_grad_batches
        for step, shares in enumerate(self.step_shares(epoch)):
            if max(len(groups) for groups in shares) > per_step:
                raise ConfigError(
                    f"step {step} of epoch {epoch} needs more than {per_step} micro-batches of at most "
                    f"{self.max_tokens_per_batch} tokens: set trainer.accumulate_grad_batches from "
                    "micro_batches_per_step (SFTDataModule does)"
                )
            for k in range(per_step):
                for groups in shares:
                    if k < len(groups):
                        chunks.append(groups[k])
                        weights.append(1)
                    else:  # the share's shortest row keeps this rank in step at little cost
                        share = np.concatenate(groups)
                        chunks.append(share[[int(np.argmin(self.num_tokens[share]))]])
                        weights.append(0)
        return chunks, weights

    def micro_batches(self, epoch: int) -> list[np.ndarray]:
        """The row indices of every micro-batch of ``epoch``, in order (before sharding across ranks)."""
        if self.step_rows is not None:
            return self._step_chunks(epoch)[0]
        if self.epoch_rows is not None:
            return self._epoch_micro_batches(epoch)
        if self._groups is None:
            assert self.batch_size is not None  # no groups: fixed-size batches (checked in __init__)
            order = (
                self._rng(epoch).permutation(len(self.num_tokens))
                if self.shuffle
                else np.arange(len(self.num_tokens))
            )
            return fixed_size_batches(order[: self._rows], self.batch_size)
        if not self.shuffle:
            return list(self._groups)
        return [self._groups[i] for i in self._rng(epoch).permutation(len(self._groups))]

    def _epoch_micro_batches(self, epoch: int) -> list[np.ndarray]:
        """Micro-batches of the rows ``epoch_rows(epoch)`` chose, grouped (or packed) for this epoch."""
        assert self.epoch_rows is not None  # only called when rows are chosen per epoch
        rows = np.asarray(self.epoch_rows(epoch), dtype=np.int64)
        rng = self._rng(epoch)
        if self.max_tokens_per_batch is None:
            assert self.batch_size is not None  # no token budget: fixed-size batches (checked in __init__)
            return fixed_size_batches(
                rows[rng.permutation(len(rows))] if self.shuffle else rows, self.batch_size
            )
        group = pack_best_fit_decreasing if self.packing else token_budget_batches
        groups = [rows[members] for members in group(self.num_tokens[rows], self.max_tokens_per_batch)]
        return [groups[i] for i in rng.permutation(len(groups))] if self.shuffle else groups

    def plan(self, epoch: int) -> list[MicroBatch]:
        """The global plan of ``epoch``: micro-batch ``g`` runs on rank ``g % num_replicas``."""
        if self.step_rows is not None:
            chunks, weights = self._step_chunks(epoch)
        else:
            chunks = self.micro_batches(epoch)[: self.total_size]
            weights = [1] * len(chunks)
        for filler in range(self.total_size - len(chunks)):
            chunks.append(chunks[filler % len(chunks)])
            weights.append(0)
        per_step = self.num_replicas * self.accumulate_grad_batches
        plan = []
        for step_start in range(0, len(chunks), per_step):
            step = range(step_start, min(step_start + per_step, len(chunks)))
            trained = sum(int(self.num_trained[chunks[g]].sum()) for g in step if weights[g])
            tokens = sum(int(self.num_tokens[chunks[g]].sum()) for g in step if weights[g])
            for g in step:
                plan.append(MicroBatch(tuple(int(i) for i in chunks[g]), trained, tokens, weights[g]))
        return plan

    def __iter__(self) -> Iterator[MicroBatch]:
        plan = self.plan(self.epoch)[self.rank :: self.num_replicas]
        start, self._start = self._start, 0
        return iter(plan[start:])

    def state_dict(self) -> dict[str, Any]:
        """The epoch and the position inside it, for exact resume."""
        return {"epoch": self.epoch, "start": self._start, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state["start"]`` micro-batches into epoch ``state["epoch"]``."""
        self.epoch, self._start, self.seed = int(state["epoch"]), int(state["start"]), int(state["seed"])


def _whole_steps(rows: int, step_rows: int, num_replicas: int, max_tokens_per_batch: int | None) -> int:
    """The rows of an epoch in whole steps of ``step_rows``, checked."""
    if max_tokens_per_batch is None:
        raise ValueError("step_rows needs max_tokens_per_batch")
    if step_rows % num_replicas:
        raise ConfigError(
            f"data.global_batch_size={step_rows} does not divide by the data-parallel size ({num_replicas})"
        )
    if rows < step_rows:
        raise ConfigError(f"fewer rows ({rows}) than one optimizer step (data.global_batch_size={step_rows})")
    return rows - rows % step_rows


def micro_batches_per_step(sampler: MicroBatchSampler, epochs: int) -> int:
    """The most micro-batches any rank needs in any step of the first ``epochs`` epochs (step mode).

    Args:
        sampler: A sampler with ``step_rows`` and a token budget (its ``accumulate_grad_batches`` is unused).
        epochs: The epochs the run will train.
    """
    return max(
        len(groups)
        for epoch in range(max(epochs, 1))
        for shares in sampler.step_shares(epoch)
        for groups in shares
    )
