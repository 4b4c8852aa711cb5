"""Compatibility: `AtomicCheckpointIO` moved to `lit_sft.training.checkpoint_io`; configs that name
``lit_sft.checkpoint_io.AtomicCheckpointIO`` keep working."""

from lit_sft.training.checkpoint_io import AtomicCheckpointIO

__all__ = ["AtomicCheckpointIO"]
