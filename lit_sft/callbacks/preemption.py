"""`Preemption`: on SIGTERM or SIGUSR1, save a checkpoint at the next optimizer step and stop."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from lit_sft.errors import LitSFTError

log = logging.getLogger("lit_sft")


class Preempted(LitSFTError):
    """The run was stopped by a signal after saving a checkpoint; resume with ``--ckpt_path <checkpoint>``.

    Attributes:
        signum: The signal received.
        checkpoint: The checkpoint written.
    """

    def __init__(self, signum: int, step: int, checkpoint: str) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        # The path, not "last": without a configured ModelCheckpoint the checkpoint lies in the logger's
        # version directory, and a new run's "last" would look in the next version's and start over.
        super().__init__(
            f"{name} received: checkpoint of step {step} saved to {checkpoint}; "
            f"resume with --ckpt_path {checkpoint}"
        )


class Preemption(Callback):
    """Turns SIGTERM (schedulers, spot instances, Kubernetes) and SIGUSR1 (SLURM's warning signal) into a
    checkpoint and a clean stop.

    The signal only sets a flag; at the end of the next optimizer step (never in the middle of gradient
    accumulation) every rank agrees on it, the checkpoint is written as ``last.ckpt`` beside the
    ``ModelCheckpoint`` files (``<default_root_dir>/checkpoints`` without one), and before the following
    batch the run stops by raising `Preempted`, which ``lit-sft`` reports in one line with exit status
    128 + the signal number, so that a job scheduler retries it. The resumed run continues exactly where
    this one stopped.

    Args:
        signals: Signal names to handle.
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._last_step = -1
        self._stop: Preempted | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum
        log.warning(f"lit_sft: {signal.Signals(signum).name} received; saving a checkpoint after this step")

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Installed after Lightning's own handlers, replacing them for these signals: Lightning would stop
        # at the next batch without a checkpoint.
        for name in self.signals:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._handler)
        self._last_step = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._last_step:  # inside gradient accumulation: not a place to stop
            return
        self._last_step = trainer.global_step
        received = self.received is not None
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        directory = getattr(trainer.checkpoint_callback, "dirpath", None) or os.path.join(
            trainer.default_root_dir, "checkpoints"
        )
        path = os.path.join(directory, "last.ckpt")
        trainer.save_checkpoint(path)
        self._stop = Preempted(self.received or signal.SIGTERM, trainer.global_step, path)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Stop here rather than right after saving, so that Lightning has logged the saved step's metrics.
        if self._stop is not None:
            raise self._stop

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
