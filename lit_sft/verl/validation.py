"""`VerlValidation`: validation on verl's schedule, counted in optimizer steps, and always at the last step.

verl's SFT trainers validate when ``global_step % test_freq == 0`` and at the last step whatever
``test_freq`` says (``is_last_step`` in ``verl/trainer/fsdp_sft_trainer.py`` and ``verl/trainer/sft_trainer.py``),
then save. Lightning counts validation intervals in micro-batches and has no "last step" rule, and under
token-budget micro-batches (verl's ``use_dynamic_bsz``) the micro-batches per step are known only once the
data module has measured the rows; this callback fills both gaps.
"""

from __future__ import annotations

import math

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override


class VerlValidation(Callback):
    """Validate every ``every_n_train_steps`` optimizer steps and at the run's last step.

    Args:
        every_n_train_steps: Validate when the optimizer step is a multiple of this (verl's ``test_freq``);
            None leaves the interval to the Trainer (``check_val_every_n_epoch``).
    """

    def __init__(self, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be at least 1, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The fit loop has read val_check_interval (micro-batches) by now; the data module has set the
        # accumulation, which token-budget steps only know after measuring the rows.
        if self.every_n_train_steps is not None and trainer.check_val_every_n_epoch is None:
            trainer.val_check_batch = self.every_n_train_steps * trainer.accumulate_grad_batches

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        last = trainer.estimated_stepping_batches
        if math.isfinite(last) and trainer.global_step >= last:
            # Lightning validates right after a batch that asks the run to stop (and the checkpoint callback
            # saves at the end of training after it), which is verl's order at its last step.
            trainer.should_stop = True
