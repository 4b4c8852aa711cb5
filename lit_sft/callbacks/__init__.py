"""Callbacks that Lightning does not have."""

from lit_sft.callbacks.gsm8k import GSM8KEvaluation
from lit_sft.callbacks.hf_export import HFExport
from lit_sft.callbacks.progress import StepProgressBar, StepRichProgressBar
from lit_sft.callbacks.summary import RunSummary

__all__ = ["GSM8KEvaluation", "HFExport", "RunSummary", "StepProgressBar", "StepRichProgressBar"]
