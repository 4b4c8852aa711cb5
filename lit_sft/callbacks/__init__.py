"""Callbacks that Lightning does not have."""

from lit_sft.callbacks.summary import RunSummary

__all__ = ["RunSummary"]
