"""Lightning's progress bars, counting optimizer steps when ``max_steps`` bounds the run.

Under ``max_steps``, Lightning sets ``max_epochs`` to -1 and its rich bar reads ``Epoch 0/-2``; these
subclasses show ``step 12/800`` instead. ``lit-sft fit`` swaps Lightning's default bar (rich when it is
installed, TQDM otherwise) for the matching one; name them in ``trainer.callbacks`` to configure them.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from typing_extensions import override


def train_description(trainer: Trainer) -> str:
    """``step 12/800`` when ``trainer.max_steps`` bounds the run, prefixed by the epoch once there are
    several (``Epoch 2, step 430/800``); ``Epoch 1/2`` when only ``max_epochs`` bounds it."""
    epoch, max_epochs = trainer.current_epoch, trainer.max_epochs
    epoch_text = f"Epoch {epoch}" + (
        f"/{max_epochs - 1}" if max_epochs is not None and max_epochs > 0 else ""
    )
    if trainer.max_steps is None or trainer.max_steps < 0:
        return epoch_text
    step_text = f"step {trainer.global_step}/{trainer.max_steps}"
    return f"{epoch_text}, {step_text}" if epoch > 0 or (max_epochs or 0) > 1 else step_text


class StepProgressBar(TQDMProgressBar):
    """The TQDM progress bar whose training description is `train_description` (the optimizer step and the
    total steps), updated with the bar.

    Args:
        refresh_rate: Update the bar every this many micro-batches.
        process_position: Line offset of the bar (several bars in one terminal).
        leave: Keep each epoch's finished bar on screen.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)

    @override
    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(train_description(trainer), refresh=False)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.train_progress_bar is not None and not self.train_progress_bar.disable:
            self.train_progress_bar.set_description(train_description(trainer), refresh=False)


class StepRichProgressBar(RichProgressBar):
    """The rich progress bar whose training description is `train_description`, updated with the bar.

    Args:
        refresh_rate: Update the bar every this many micro-batches.
        leave: Keep each epoch's finished bar on screen.
        theme: Lightning's ``RichProgressBarTheme``.
        console_kwargs: Options of the ``rich.console.Console``.
    """

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        return train_description(self.trainer)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None and not self.is_disabled:
            self.progress.update(self.train_progress_bar_id, description=train_description(trainer))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def with_step_progress_bar(callbacks: list[Callback]) -> None:
    """Replace Lightning's default progress bar in ``callbacks`` (in place) by the step-counting one with
    the same settings; a bar of another class (one the user configured) is left as it is."""
    for index, callback in enumerate(callbacks):
        if type(callback) is TQDMProgressBar:
            callbacks[index] = StepProgressBar(
                refresh_rate=callback.refresh_rate,
                process_position=callback.process_position,
                leave=callback._leave,
            )
        elif type(callback) is RichProgressBar:
            callbacks[index] = StepRichProgressBar(
                # Lightning annotates the property float, but it returns the int __init__ was given.
                refresh_rate=callback.refresh_rate,  # type: ignore[arg-type]
                leave=callback._leave,
                theme=callback.theme,
                console_kwargs=callback._console_kwargs,
            )
