"""Faults injected into training subprocesses by the fault tests (named in their YAML configs)."""

from __future__ import annotations

import io
import os
import signal
from typing import Any

import torch
from lightning.pytorch import Callback

from lit_sft.checkpoint_io import AtomicCheckpointIO


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
    """Writes half of its ``crash_on``-th checkpoint, as the real writer would, then SIGKILLs the process."""

    def __init__(self, crash_on: int = 1) -> None:
        super().__init__()
        self.crash_on, self.saves = crash_on, 0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.saves += 1
        if self.saves == self.crash_on:
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            with open(f"{os.fspath(path)}.tmp-{os.getpid()}", "wb") as handle:
                handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        super().save_checkpoint(checkpoint, path, storage_options)
