"""`RunSummary`: the closing summary of a run (first and last validation metrics, time, tokens, throughput and
memory, files)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lit_sft.callbacks.throughput import TrainingThroughput

log = logging.getLogger("lit_sft")


#: Training metrics the summary shows first and last values of (logged every optimizer step).
TRAIN_METRICS = ("train/loss", "train/token_accuracy", "train/entropy")


class RunSummary(Callback):
    """Records every validation metric (``val/*``) and the training loss, token accuracy and entropy, and
    prints a summary when ``fit`` or ``validate`` ends.

    When the sanity check covers the whole validation set (``trainer.num_sanity_val_steps: -1``), its loss
    is the loss before any training: it is recorded as step 0 and written to the loggers, so the first
    validation loss is that of the untrained model. Metrics logged before training starts (such as a
    GSM8K evaluation at step 0) are recorded too.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[tuple[int, float]]] = {}
        #: ``(step, value)`` of every optimizer step, per name of `TRAIN_METRICS` logged.
        self.train_history: dict[str, list[tuple[int, float]]] = {}
        self._recorded: dict[str, Any] = {}
        self._start = time.monotonic()

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._start = time.monotonic()

    def _record(self, trainer: Trainer, step: int) -> None:
        for name, value in trainer.callback_metrics.items():
            if not name.startswith("val/"):
                continue
            # A metric not logged again (GSM8K every n validations) keeps its tensor in callback_metrics:
            # skip it by identity, not by value, so that a repeated value is recorded at its new step.
            if self._recorded.get(name) is value:
                continue
            self._recorded[name] = value
            points = self.history.setdefault(name, [])
            if points and points[-1][0] == step:
                points[-1] = (step, float(value))
            else:
                points.append((step, float(value)))

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer, trainer.global_step)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        for name in TRAIN_METRICS:
            value = trainer.callback_metrics.get(name)
            points = self.train_history.setdefault(name, []) if value is not None else []
            if value is not None and (not points or points[-1][0] != trainer.global_step):
                points.append((trainer.global_step, float(value)))

    @property
    def train_losses(self) -> list[tuple[int, float]]:
        """``(step, train/loss)`` of every optimizer step."""
        return self.train_history.get("train/loss", [])

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            value = trainer.callback_metrics.get("val/loss")
            if value is None or not self._sanity_covers_all(trainer):
                return
            for logger in trainer.loggers:
                logger.log_metrics({"val/loss": float(value)}, step=0)
        self._record(trainer, trainer.global_step)
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._print(trainer, "validate")

    @staticmethod
    def _sanity_covers_all(trainer: Trainer) -> bool:
        limit = trainer.num_sanity_val_steps
        return limit == -1 or all(
            math.isinf(limit) or limit >= batches for batches in trainer.num_val_batches
        )

    @staticmethod
    def _format(name: str, value: float) -> str:
        return f"{value:.1%}" if "acc" in name else f"{value:.4f}"

    def lines(self, trainer: Trainer) -> list[str]:
        """The summary, one string per line."""
        elapsed = time.monotonic() - self._start
        lines = [f"steps: {trainer.global_step}, wall time: {elapsed:.0f} s"]
        batches = trainer.num_training_batches
        if trainer.state.fn == TrainerFn.FITTING and batches and not math.isinf(batches):
            lines[0] += f", epochs: {trainer.global_step * trainer.accumulate_grad_batches / batches:.2f}"
        for name in TRAIN_METRICS:
            points = self.train_history.get(name)
            if points:
                (first_step, first), (last_step, last) = points[0], points[-1]
                lines.append(
                    f"{name}: {self._format(name, first)} (step {first_step}) -> {self._format(name, last)} "
                    f"(step {last_step})"
                )
        for name, points in sorted(self.history.items()):
            (first_step, first), (last_step, last) = points[0], points[-1]
            line = (
                f"{name}: first {self._format(name, first)} (step {first_step}) -> last "
                f"{self._format(name, last)} (step {last_step})"
            )
            if "entropy" not in name:  # neither a lower nor a higher entropy is "best"
                best_step, best = (min if "loss" in name else max)(points, key=lambda item: item[1])
                line += f"; best {self._format(name, best)} (step {best_step})"
            lines.append(line)
        tokens = trainer.callback_metrics.get("train/tokens_seen")
        trained = trainer.callback_metrics.get("train/trained_tokens_seen")
        if tokens is not None and trained is not None:
            lines.append(f"tokens seen: {int(tokens):,} ({int(trained):,} trained)")
        for callback in trainer.callbacks:  # type: ignore[attr-defined]  # speed and memory, where measured
            if isinstance(callback, TrainingThroughput) and trainer.state.fn == TrainerFn.FITTING:
                speed = callback.summary(trainer)
                if speed:
                    lines.append(speed)
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or getattr(
            trainer.checkpoint_callback, "best_model_path", ""
        )
        if checkpoint:
            lines.append(f"checkpoint: {checkpoint}")
        if trainer.logger is not None and trainer.logger.log_dir:
            lines.append(f"logs: {trainer.logger.log_dir}")
        return lines

    @rank_zero_only
    def _print(self, trainer: Trainer, title: str) -> None:
        log.info("\n".join([f"lit_sft {title} summary", *(f"  {line}" for line in self.lines(trainer))]))

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer, trainer.global_step)
        self._print(trainer, "fit")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "train_history": self.train_history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        history = state_dict.get("history", {})
        self.history = {name: [tuple(point) for point in points] for name, points in history.items()}
        train_history = state_dict.get("train_history", {})
        if "train_losses" in state_dict:  # checkpoints from before the token metrics
            train_history = {"train/loss": state_dict["train_losses"], **train_history}
        self.train_history = {
            name: [tuple(point) for point in points] for name, points in train_history.items()
        }
