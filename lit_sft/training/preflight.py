"""Start-up checks: configuration mistakes found before any data is tokenized or any model is loaded.

``lit-sft fit`` and ``lit-sft validate`` run `preflight` right after parsing; a Python user can call it
before ``trainer.fit``. Every problem found is reported at once, one line each, in a single `ConfigError`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from lit_sft.errors import ConfigError
from lit_sft.model.sequence_parallel import INNER_ATTENTION

#: Attention implementations that keep packed rows apart (position_ids restarting, or the collator's row
#: offsets for ``varlen``); ``auto`` resolves to one of them (`lit_sft.model.attention.resolve_attention`).
PACKING_ATTENTION = {
    "auto",
    "sdpa",
    "varlen",
    "eager",
    "flash_attention_2",
    "flash_attention_3",
    "flex_attention",
}


def _writable(directory: str) -> str | None:
    """None when ``directory`` can be created and written to, else the reason."""
    if "://" in directory:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError as error:
        return f"{error.strerror or error}"
    return None


def _output_directories(trainer: Any) -> dict[str, str]:
    directories = {"trainer.default_root_dir": trainer.default_root_dir}
    for index, logger in enumerate(trainer.loggers):
        root = getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None)
        if root:
            directories[f"trainer.logger[{index}] ({type(logger).__name__})"] = root
    for callback in trainer.callbacks:
        for attribute in ("dirpath", "output_dir"):
            value = getattr(callback, attribute, None)
            if isinstance(value, str) and value:
                directories[f"{type(callback).__name__}.{attribute}"] = value
    return directories


def _monitored_val_metrics(trainer: Any) -> list[str]:
    return [
        f"{type(callback).__name__} monitors {callback.monitor}"
        for callback in trainer.callbacks
        if isinstance(getattr(callback, "monitor", None), str) and callback.monitor.startswith("val/")
    ]


def _vision_pairing(model: Any, datamodule: Any) -> list[str]:
    """Image data needs an image model and the other way round; both must encode images alike."""
    from lit_sft.data.vision import VisionSFTDataModule
    from lit_sft.model.vision import VisionSFTModule

    vision_model, vision_data = (
        isinstance(model, VisionSFTModule),
        isinstance(datamodule, VisionSFTDataModule),
    )
    if vision_model and not vision_data:
        return [
            f"model {type(model).__name__} trains on images: set data.class_path to lit_sft.VisionSFTDataModule "
            f"(got {type(datamodule).__name__})"
        ]
    if vision_data and not vision_model:
        return [
            f"data {type(datamodule).__name__} yields images that {type(model).__name__} cannot read: set "
            "model.class_path to lit_sft.VisionSFTModule"
        ]
    conflict = model.processor_kwargs_conflict(datamodule) if vision_model else None
    return [conflict] if conflict else []


def preflight(trainer: Any, model: Any, datamodule: Any) -> None:
    """Check the run's configuration before any heavy work.

    Checks that output directories are writable, that local data files exist, that GPU-only options are
    not asked of a CPU run, that packing is paired with an attention implementation that keeps rows
    apart, and that callbacks watching validation metrics have validation data.

    Raises:
        ConfigError: Listing every problem found.
    """
    problems: list[str] = []
    for name, directory in _output_directories(trainer).items():
        reason = _writable(directory)
        if reason:
            problems.append(f"{name}: cannot write to {directory} ({reason})")

    problems += datamodule.preflight_problems() if hasattr(datamodule, "preflight_problems") else []
    problems += _vision_pairing(model, datamodule)

    on_gpu = isinstance(trainer.accelerator, CUDAAccelerator) and torch.cuda.is_available()
    attention = getattr(model, "attn_implementation", None)
    if attention in ("flash_attention_2", "flash_attention_3") and not on_gpu:
        problems.append(f"model.attn_implementation={attention} needs a CUDA GPU; use sdpa on CPU")
    if getattr(model, "liger_kernels", False) and not on_gpu:
        problems.append("model.liger_kernels needs a CUDA GPU")
    if getattr(getattr(model, "loss_options", None), "implementation", None) == "liger" and not on_gpu:
        problems.append("model.loss.implementation=liger needs a CUDA GPU; use chunked")
    if getattr(model, "quantization", None) is not None:
        from lit_sft.model.quantization import quantization_problems

        problems += quantization_problems(on_gpu)
        if isinstance(trainer.strategy, FSDPStrategy | ModelParallelStrategy):
            problems.append("model.quantization (4-bit QLoRA) runs on one device or with DDP, not with FSDP")
    if getattr(datamodule, "packing", False) and attention not in PACKING_ATTENTION:
        problems.append(
            f"data.packing with model.attn_implementation={attention!r}: only {sorted(PACKING_ATTENTION)} are known "
            "to keep packed rows apart"
        )

    sequence = int(getattr(model, "sequence_parallel_size", 1) or 1)
    if sequence > 1:
        if not getattr(datamodule, "packing", False):
            problems.append("model.sequence_parallel_size > 1 splits packed sequences: set data.packing=true")
        if trainer.world_size % sequence:
            problems.append(
                f"model.sequence_parallel_size={sequence} must divide the number of processes ({trainer.world_size})"
            )
        if attention != "auto" and attention not in INNER_ATTENTION:
            problems.append(
                f"model.sequence_parallel_size > 1 works with {', '.join(INNER_ATTENTION)}, not {attention!r}"
            )

    has_val = bool(getattr(datamodule, "val_files", None)) or getattr(datamodule, "val_ratio", 0) > 0
    if not has_val and trainer.limit_val_batches != 0:
        for watcher in _monitored_val_metrics(trainer):
            problems.append(
                f"{watcher}, but the data has no validation split (set data.val_files or data.val_ratio)"
            )
        from lit_sft.callbacks.gsm8k import GSM8KEvaluation

        for callback in trainer.callbacks:
            if isinstance(callback, GSM8KEvaluation) and not callback.data_files:
                problems.append("GSM8KEvaluation has no questions: set its data_files or data.val_files")

    if problems:
        raise ConfigError("the configuration cannot run:\n  " + "\n  ".join(problems))
