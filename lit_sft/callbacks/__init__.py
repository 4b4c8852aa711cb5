"""Callbacks that Lightning does not have."""

from lit_sft.callbacks.global_step import GlobalStepCheckpoint
from lit_sft.callbacks.gsm8k import GSM8KEvaluation
from lit_sft.callbacks.hf_export import HFExport
from lit_sft.callbacks.progress import StepProgressBar, StepRichProgressBar
from lit_sft.callbacks.summary import RunSummary
from lit_sft.callbacks.throughput import TrainingThroughput

__all__ = [
    "GSM8KEvaluation",
    "GlobalStepCheckpoint",
    "HFExport",
    "RunSummary",
    "StepProgressBar",
    "StepRichProgressBar",
    "TrainingThroughput",
]
