"""Small helpers about the process layout of a run."""

from __future__ import annotations

from typing import Any


def data_parallel_layout(trainer: Any) -> tuple[int, int]:
    """(data-parallel size, this rank's data-parallel index) of a trainer: ranks that see different data.

    The ranks of a sequence-parallel group (``model.sequence_parallel_size``) share one data-parallel index.
    """
    if trainer is None:
        return 1, 0
    try:
        kwargs = trainer.strategy.distributed_sampler_kwargs
    except (AttributeError, RuntimeError):
        kwargs = None
    size, rank = (
        (int(kwargs["num_replicas"]), int(kwargs["rank"]))
        if kwargs and "num_replicas" in kwargs
        else (
            trainer.world_size,
            trainer.global_rank,
        )
    )
    sequence = int(getattr(trainer.lightning_module, "sequence_parallel_size", 1) or 1)
    return size // sequence, rank // sequence


def gradient_average_size(trainer: Any) -> int:
    """How many ranks the strategy averages gradients over (DDP, FSDP, FSDP2: all of them)."""
    return trainer.world_size if trainer is not None else 1


def is_sharded(trainer: Any) -> bool:
    """Whether the trainer's strategy shards parameters (FSDP, FSDP2): state must be gathered to export."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return trainer is not None and isinstance(trainer.strategy, FSDPStrategy | ModelParallelStrategy)


def gather_full_state_dict(trainer: Any, prefix: str = "model.") -> dict[str, Any]:
    """The full (unsharded) state dict of the LightningModule's ``model``, on CPU, on rank 0.

    A collective: every rank must call it. Other ranks get an empty dict.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(trainer.strategy.model, options=options)
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
