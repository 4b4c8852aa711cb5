"""Compatibility: the strategies moved to `lit_sft.training.strategies`; configs that name
``lit_sft.strategies.FSDP2Strategy`` (and checkpoints' saved configs) keep working."""

from lit_sft.training.strategies import AtomicShardedCheckpoints, FSDP2Strategy, FSDPStrategyPreset

__all__ = ["AtomicShardedCheckpoints", "FSDP2Strategy", "FSDPStrategyPreset"]
