"""The model side: `SFTModule`, how it is built, its loss and its learning-rate schedule."""

from lit_sft.model.build import LoraOptions, load_module
from lit_sft.model.loss import LossOptions, step_normalized_loss, token_loss_sum
from lit_sft.model.module import SFTModule
from lit_sft.model.quantization import QuantizationOptions
from lit_sft.model.scheduler import WarmupDecayLR

__all__ = [
    "LoraOptions",
    "LossOptions",
    "QuantizationOptions",
    "SFTModule",
    "WarmupDecayLR",
    "load_module",
    "step_normalized_loss",
    "token_loss_sum",
]
