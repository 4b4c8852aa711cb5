"""Faults injected into training subprocesses by the fault tests (named in their YAML configs)."""

from __future__ import annotations

import io
import os
import signal
from typing import Any

import torch
from lightning.pytorch import Callback

from lit_sft.training.checkpoint_io import AtomicCheckpointIO


class KillAt(Callback):
    """SIGKILLs the process right after optimizer step ``step`` (no handler, no cleanup: a hard crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(Callback):
    """Sends the process ``name`` (SIGTERM, SIGUSR1) while optimizer step ``step`` runs."""

    def __init__(self, step: int, name: str = "SIGTERM") -> None:
        self.step, self.name = step, name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), getattr(signal, self.name))


class CrashingCheckpointIO(AtomicCheckpointIO):
    """On its ``crash_on``-th checkpoint, runs the real writer (`AtomicCheckpointIO`) with a ``torch.save``
    that writes half of the bytes to the writer's file handle and then SIGKILLs the process: a writer that
    wrote in place would leave a truncated checkpoint at the final path."""

    def __init__(self, crash_on: int = 1) -> None:
        super().__init__()
        self.crash_on, self.saves = crash_on, 0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.saves += 1
        if self.saves == self.crash_on:
            real_save = torch.save

            def save_half_then_die(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                handle.flush()
                os.fsync(handle.fileno())
                os.kill(os.getpid(), signal.SIGKILL)

            torch.save = save_half_then_die
        super().save_checkpoint(checkpoint, path, storage_options)


class KillInShardedSave(Callback):
    """SIGKILLs each rank right after it has written its shards of the ``nth`` sharded save, before the
    metadata: what a kill halfway through saving a sharded checkpoint leaves behind."""

    def __init__(self, nth: int = 2) -> None:
        self.nth, self.count = nth, 0

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        import lightning.pytorch.strategies.model_parallel as model_parallel

        original = model_parallel._distributed_checkpoint_save

        def save_then_die(state: Any, path: Any) -> None:
            original(state, path)
            self.count += 1
            if self.count == self.nth:
                os.kill(os.getpid(), signal.SIGKILL)

        model_parallel._distributed_checkpoint_save = save_then_die
