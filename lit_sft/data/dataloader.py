"""The micro-batch dataset and a DataLoader that Lightning can resume mid-epoch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader, Dataset

from lit_sft.batch import IGNORE_INDEX, TextBatch
from lit_sft.data.collate import add_targets
from lit_sft.data.sampler import MicroBatch, MicroBatchSampler


class MicroBatchDataset(Dataset):
    """Maps a `MicroBatch` from the sampler to a collated batch of tensors.

    Besides the model inputs and ``labels``, a batch carries ``step_trained_tokens`` and ``step_tokens``
    (see `MicroBatchSampler`), which the loss uses to normalise.
    """

    def __init__(self, dataset: datasets.Dataset, collator: Callable[..., TextBatch]) -> None:
        self.dataset = dataset
        self.collator = collator

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, micro_batch: MicroBatch) -> TextBatch:
        rows = self.dataset[list(micro_batch.indices)]
        batch = self.collator(
            *(rows[name] for name in getattr(self.collator, "columns", ("input_ids", "labels")))
        )
        if micro_batch.weight == 0:
            batch["labels"].fill_(IGNORE_INDEX)
        add_targets(batch)
        # Plain ints: Lightning moves only tensors to the device, so reading them never syncs.
        batch["step_trained_tokens"] = micro_batch.step_trained_tokens
        batch["step_tokens"] = micro_batch.step_tokens
        return batch


def processed_in_epoch(trainer: Any | None) -> int:
    """Micro-batches of the current epoch the training loop has processed (0 without a trainer): what a
    `ResumableDataLoader` saves as ``consumed``."""
    if trainer is None:
        return 0
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `MicroBatchSampler` whose ``state_dict`` Lightning saves in checkpoints.

    The state is the epoch and the number of micro-batches the training loop has *processed* (read from
    the loop through ``consumed``, not counted at the iterator, which runs ahead because of prefetching).
    Loading it makes the next iteration start at the following micro-batch; a checkpoint taken at the end
    of an epoch resumes at the start of the next one, never skipping or replaying an epoch.

    Args:
        dataset: The `MicroBatchDataset`.
        sampler: The `MicroBatchSampler`.
        consumed: Returns how many micro-batches of the current epoch the training loop has processed.
        **kwargs: DataLoader options (``num_workers``...).
    """

    sampler: MicroBatchSampler  # narrower than DataLoader's: the state below is the sampler's

    def __init__(
        self,
        dataset: MicroBatchDataset,
        sampler: MicroBatchSampler,
        consumed: Callable[[], int],
        **kwargs: Any,
    ) -> None:
        # Its own generator: creating an iterator draws a worker base seed, which must not consume the
        # global torch RNG (dropout), or a resumed run would drift from an uninterrupted one.
        kwargs.setdefault("generator", torch.Generator().manual_seed(sampler.seed))
        super().__init__(dataset, sampler=sampler, batch_size=None, **kwargs)
        self.consumed = consumed

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.sampler.epoch, "consumed": int(self.consumed()), "seed": self.sampler.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        epoch, consumed = int(state_dict["epoch"]), int(state_dict["consumed"])
        if consumed >= len(self.sampler):
            epoch, consumed = epoch + 1, 0
        self.sampler.load_state_dict({"epoch": epoch, "start": consumed, "seed": state_dict["seed"]})
