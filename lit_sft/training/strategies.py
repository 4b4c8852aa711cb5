"""Strategy presets for Lightning: FSDP (``FSDPStrategy``) and FSDP2 (``ModelParallelStrategy`` + ``fully_shard``)
that shard per decoder layer, found from the model itself.

Hugging Face models name the modules that must not be split across shards in ``_no_split_modules``
(``Qwen2DecoderLayer``, ``LlamaDecoderLayer``...): those are the natural FSDP units and activation
checkpointing boundaries. The presets read them from the model when it is built (the model does not exist
when YAML is parsed), or take class names from the config::

    trainer:
      strategy:
        class_path: lit_sft.training.strategies.FSDP2Strategy
        init_args: {param_dtype: bfloat16, cpu_offload: false}

DDP needs no preset: ``strategy: ddp``.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from typing_extensions import override

from lit_sft.errors import ConfigError
from lit_sft.hub import DTYPES
from lit_sft.io import fsync_directory
from lit_sft.model.hf import base_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

DType = Literal["bfloat16", "float16", "float32"]


def decoder_layer_names(model: PreTrainedModel, configured: list[str] | None = None) -> set[str]:
    """Class names of the model's shardable units: ``configured``, else its ``_no_split_modules``.

    Raises:
        ConfigError: When neither gives a class that occurs in the model.
    """
    names = set(configured or getattr(base_model(model), "_no_split_modules", None) or [])
    present = {type(module).__name__ for module in model.modules()}
    if not names & present:
        raise ConfigError(
            f"no decoder layer class to shard: {sorted(names) or 'the model has no _no_split_modules'}; set the "
            "strategy's layer_classes to class names the model has (e.g. [Qwen2DecoderLayer])"
        )
    return names & present


def decoder_layers(model: torch.nn.Module, names: set[str]) -> list[torch.nn.Module]:
    """The modules of ``model`` whose class name is in ``names``."""
    return [module for module in model.modules() if type(module).__name__ in names]


class AtomicShardedCheckpoints:
    """Sharded checkpoints (a directory written by every rank) saved so that a complete one is always there.

    Lightning writes the shards straight into ``last.ckpt/``: a run killed while saving leaves a directory
    that mixes the new step's shards with the old metadata, and resuming from it silently trains from a
    state that never existed. Here every rank writes into ``<name>.saving`` beside it; once all ranks are
    done, rank 0 swaps it in with two renames (``<name>`` -> ``<name>.replaced``, ``<name>.saving`` ->
    ``<name>``) and deletes the old one. None of these names ends in ``.ckpt``, so Lightning's
    ``--ckpt_path last`` never picks a partial one.
    """

    def _saves_sharded(self) -> bool:
        raise NotImplementedError

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if not self._saves_sharded() or "://" in os.fspath(filepath):
            super().save_checkpoint(checkpoint, filepath, storage_options)  # type: ignore[misc]
            return
        path = Path(self.broadcast(os.fspath(filepath)))  # type: ignore[attr-defined]
        staging, replaced = path.with_name(path.name + ".saving"), path.with_name(path.name + ".replaced")
        if self.global_rank == 0:  # type: ignore[attr-defined]
            for leftover in (staging, replaced):  # from a run killed while saving
                if leftover.exists():
                    shutil.rmtree(leftover)
        self.barrier("lit_sft_checkpoint_staging")  # type: ignore[attr-defined]
        super().save_checkpoint(checkpoint, staging, storage_options)  # type: ignore[misc]
        self.barrier("lit_sft_checkpoint_written")  # type: ignore[attr-defined]
        if self.global_rank == 0:  # type: ignore[attr-defined]
            if path.is_dir():
                path.rename(replaced)
            elif path.exists():
                path.unlink()
            staging.rename(path)
            if replaced.exists():
                shutil.rmtree(replaced)
            fsync_directory(path.parent)
        self.barrier("lit_sft_checkpoint_renamed")  # type: ignore[attr-defined]


class FSDPStrategyPreset(AtomicShardedCheckpoints, FSDPStrategy):
    """Lightning's ``FSDPStrategy`` (FSDP1, GPUs) wrapping and checkpointing each decoder layer.

    Args:
        layer_classes: Class names to wrap (default: the model's ``_no_split_modules``).
        activation_checkpointing: Recompute each decoder layer's activations in the backward pass.
        sharding_strategy: ``FULL_SHARD``, ``SHARD_GRAD_OP``, ``HYBRID_SHARD`` or ``NO_SHARD``.
        cpu_offload: Keep sharded parameters (and gradients) in CPU memory.
        param_dtype: Compute dtype of parameters inside FSDP (e.g. ``bfloat16``); None keeps Lightning's precision.
        reduce_dtype: Dtype of the gradient reduction (``float32`` is the safe choice with bf16 parameters).
        state_dict_type: ``sharded`` checkpoints (a directory per checkpoint, fast) or ``full`` (one file).
        **kwargs: Any other ``FSDPStrategy`` argument.
    """

    def __init__(
        self,
        layer_classes: list[str] | None = None,
        activation_checkpointing: bool = False,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD",
        cpu_offload: bool = False,
        param_dtype: DType | None = None,
        reduce_dtype: DType = "float32",
        state_dict_type: Literal["full", "sharded"] = "sharded",
        **kwargs: Any,
    ) -> None:
        mixed_precision = None
        if param_dtype is not None:
            from torch.distributed.fsdp import MixedPrecision

            mixed_precision = MixedPrecision(
                param_dtype=DTYPES[param_dtype],
                reduce_dtype=DTYPES[reduce_dtype],
                buffer_dtype=DTYPES[param_dtype],
            )
        self.layer_classes = layer_classes
        policy = functools.partial(_by_name_policy, self)
        super().__init__(
            auto_wrap_policy=policy,
            activation_checkpointing_policy=policy if activation_checkpointing else None,
            sharding_strategy=sharding_strategy,
            cpu_offload=cpu_offload,
            mixed_precision=mixed_precision,
            state_dict_type=state_dict_type,
            use_orig_params=True,  # LoRA: frozen and trainable parameters share wrapped units
            **kwargs,
        )

    def _saves_sharded(self) -> bool:
        return self._state_dict_type == "sharded"

    def layer_names(self) -> set[str]:
        """The decoder layer class names of the model being wrapped (resolved once)."""
        if not hasattr(self, "_layer_names"):
            module = self.lightning_module
            assert module is not None, "the strategy wraps layers of a connected LightningModule"
            # An SFTModule attribute; nn.Module.__getattr__ types an unknown attribute as Tensor | Module.
            self._layer_names = decoder_layer_names(module.model, self.layer_classes)  # type: ignore[arg-type]
        return self._layer_names


def _by_name_policy(
    strategy: FSDPStrategyPreset, module: torch.nn.Module, recurse: bool, nonwrapped_numel: int
) -> bool:
    """An FSDP auto-wrap policy: wrap modules whose class is one of the strategy's decoder layers."""
    return True if recurse else type(module).__name__ in strategy.layer_names()


class FSDP2Strategy(AtomicShardedCheckpoints, ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` with FSDP2 (``fully_shard``) on each decoder layer and the root,
    data parallel over every process. Runs on GPUs (NCCL) and on CPU (gloo).

    `SFTModule.configure_model` calls `shard` after building the model (and its LoRA adapters).

    Args:
        layer_classes: Class names to shard as units (default: the model's ``_no_split_modules``).
        reshard_after_forward: Free gathered parameters after each layer's forward (less memory, one more
            all-gather in backward).
        cpu_offload: Keep sharded parameters, gradients and optimizer states in CPU memory (GPU only).
        param_dtype: Compute dtype of parameters (e.g. ``bfloat16``); None keeps them as they are.
        reduce_dtype: Dtype of the gradient reduction.
        save_distributed_checkpoint: Sharded checkpoints (a directory per checkpoint, written by every rank
            in parallel); False gathers one full file on rank 0.
        data_parallel_size: Ranks that shard one model (default: all of them).
        **kwargs: Any other ``ModelParallelStrategy`` argument (``timeout``, ``process_group_backend``).
    """

    def __init__(
        self,
        layer_classes: list[str] | None = None,
        reshard_after_forward: bool = True,
        cpu_offload: bool = False,
        param_dtype: DType | None = None,
        reduce_dtype: DType = "float32",
        save_distributed_checkpoint: bool = True,
        data_parallel_size: int | Literal["auto"] = "auto",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("tensor_parallel_size", None)  # data parallel only: no tensor parallelism
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )
        self.layer_classes = layer_classes
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = cpu_offload
        self.param_dtype, self.reduce_dtype = param_dtype, reduce_dtype

    def _saves_sharded(self) -> bool:
        return bool(self._save_distributed_checkpoint)

    @override
    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":  # Lightning's "auto" puts one data-parallel group per node
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def shard(self, model: PreTrainedModel) -> None:
        """Apply ``fully_shard`` to every decoder layer, then to the whole model (in place)."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        if self.cpu_offload and self.root_device.type != "cuda":
            raise ConfigError(
                "FSDP2Strategy.cpu_offload needs CUDA devices (the parameters live on CPU already)"
            )
        options: dict[str, Any] = {
            "mesh": self.device_mesh["data_parallel"],
            "reshard_after_forward": self.reshard_after_forward,
            "offload_policy": CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy(),
        }
        if self.param_dtype is not None:
            options["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=DTYPES[self.param_dtype], reduce_dtype=DTYPES[self.reduce_dtype]
            )
        for layer in decoder_layers(model, decoder_layer_names(model, self.layer_classes)):
            fully_shard(layer, **options)
        # The root keeps its parameters (embeddings, final norm, LM head) gathered from the forward pass to the
        # backward pass: the chunked loss runs the LM head after the model's forward has returned.
        fully_shard(model, **{**options, "reshard_after_forward": False})
