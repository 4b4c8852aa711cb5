"""`AtomicCheckpointIO`: checkpoints written to a temporary file, flushed to disk, then renamed into place."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from lit_sft.io import atomic_write, fsync_directory

__all__ = ["AtomicCheckpointIO", "fsync_directory"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves checkpoints so that a file at the final path is always complete.

    The checkpoint streams into ``<path>.tmp-<pid>`` in the same directory, is flushed and fsynced, and is
    then renamed over ``<path>`` (atomic on POSIX filesystems): a run killed while writing leaves the
    previous checkpoint (``last.ckpt`` included) intact and loadable. Lightning's default writer keeps a
    second, in-memory copy of the whole checkpoint before writing it; this one streams, so a checkpoint
    never needs twice its size in host memory. Local paths only (remote URLs use Lightning's writer).
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = os.fspath(path)
        if "://" in path:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_write(path, "wb") as handle:
            torch.save(checkpoint, handle)
