"""`GlobalStepCheckpoint`: checkpoints in verl's layout, ``<dirpath>/global_step_N/``, each with an HF model."""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

from lit_sft.callbacks.hf_export import HFExport
from lit_sft.errors import ConfigError
from lit_sft.inference.export import ExportDType, LoraExport
from lit_sft.io import atomic_write

#: The Lightning checkpoint inside each ``global_step_N`` folder (a directory for sharded strategies).
CHECKPOINT_NAME = "checkpoint.ckpt"
#: verl's tracker file (verl/utils/checkpoint/checkpoint_manager.py ``get_checkpoint_tracker_filename``).
TRACKER_NAME = "latest_checkpointed_iteration.txt"
#: The Hugging Face model inside each ``global_step_N`` folder, as verl's FSDP checkpoint manager names it.
HF_FOLDER = "huggingface"


class GlobalStepCheckpoint(ModelCheckpoint):
    """Saves ``<dirpath>/global_step_N/checkpoint.ckpt`` (resumable) and ``global_step_N/huggingface/`` (an
    HF model that ``from_pretrained`` and verl's RL trainer load) every N steps and at the end of training,
    and records N in ``latest_checkpointed_iteration.txt``, the layout verl's SFT trainers write.

    Args:
        dirpath: The folder holding the ``global_step_N`` folders (verl's ``trainer.default_local_dir``).
        every_n_train_steps: Save every this many optimizer steps (None: only at the end; verl's ``save_freq``).
        every_n_epochs: Save at the end of every this many epochs (verl's ``save_freq: after_each_epoch``).
        max_to_keep: Keep the newest this many ``global_step_N`` folders (None: all; ``max_ckpt_to_keep``).
        export_hf: Also write the HF model into each folder.
        lora: For LoRA runs: ``merged``, ``adapter`` or ``both`` (see `HFExport`).
        dtype: Weight dtype of the HF model (``auto`` keeps the training dtype).
    """

    def __init__(
        self,
        dirpath: str,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
        max_to_keep: int | None = None,
        export_hf: bool = True,
        lora: LoraExport = "merged",
        dtype: ExportDType = "auto",
    ) -> None:
        if max_to_keep is not None and max_to_keep < 1:
            raise ConfigError("GlobalStepCheckpoint.max_to_keep must be at least 1 (None keeps all)")
        super().__init__(
            dirpath=dirpath,
            filename="global_step_{step}/" + CHECKPOINT_NAME.removesuffix(".ckpt"),
            auto_insert_metric_name=False,
            monitor="step",
            mode="max",
            save_top_k=max_to_keep or -1,
            every_n_train_steps=every_n_train_steps or 0,
            every_n_epochs=every_n_epochs or 0,
            save_on_train_epoch_end=True,
        )
        self.export_hf = export_hf
        self._hf = HFExport(dirpath=dirpath, lora=lora, dtype=dtype)

    @override
    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        folder = os.path.dirname(filepath)
        if self.export_hf:  # every rank: a sharded model is gathered collectively
            self._hf.export(
                trainer, trainer.lightning_module, os.path.join(os.path.basename(folder), HF_FOLDER)
            )
        if trainer.is_global_zero:
            with atomic_write(os.path.join(os.path.dirname(folder), TRACKER_NAME)) as handle:
                handle.write(str(trainer.global_step))
        trainer.strategy.barrier("global_step_checkpoint")

    @override
    def _remove_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        folder = os.path.dirname(filepath)
        if trainer.is_global_zero and re.fullmatch(r"global_step_\d+", os.path.basename(folder)):
            shutil.rmtree(folder, ignore_errors=True)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # verl saves at its last step whatever save_freq says.
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


def find_latest(dirpath: str) -> str | None:
    """The newest resumable checkpoint under ``dirpath`` (verl's ``resume_mode: auto``): the highest
    ``global_step_N/checkpoint.ckpt``, or ``last.ckpt`` (written there when SIGTERM/SIGUSR1 stopped a run)
    when it is more recent."""
    if not os.path.isdir(dirpath):
        return None
    steps = [
        int(match.group(1))
        for name in os.listdir(dirpath)
        if (match := re.fullmatch(r"global_step_(\d+)", name))
        and os.path.exists(os.path.join(dirpath, name, CHECKPOINT_NAME))
    ]
    latest = os.path.join(dirpath, f"global_step_{max(steps)}", CHECKPOINT_NAME) if steps else None
    preempted = os.path.join(dirpath, "last.ckpt")
    if os.path.exists(preempted) and (
        latest is None or os.path.getmtime(preempted) > os.path.getmtime(latest)
    ):
        return preempted
    return latest


def checkpoint_in(folder: str) -> str:
    """The Lightning checkpoint of a ``global_step_N`` folder (or the path itself if it is one)."""
    path = os.path.expanduser(folder)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, CHECKPOINT_NAME)):
        return os.path.join(path, CHECKPOINT_NAME)
    if path.endswith(".ckpt") and os.path.exists(path):
        return path
    raise ConfigError(
        f"{folder}: no lit_sft checkpoint ({CHECKPOINT_NAME}) there; verl's own checkpoints do not resume in "
        f"lit_sft: start from their {HF_FOLDER}/ model instead (model.partial_pretrain / model.path)"
    )


def checkpoint_step(path: str) -> Any:
    """The N of a ``global_step_N`` path, or None."""
    match = re.search(r"global_step_(\d+)", path)
    return int(match.group(1)) if match else None
