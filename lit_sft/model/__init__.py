"""The model side: `SFTModule`, its loss and its learning-rate schedule."""

from lit_sft.model.loss import step_normalized_loss, token_loss_sum
from lit_sft.model.module import LoraOptions, SFTModule
from lit_sft.model.scheduler import WarmupDecayLR

__all__ = ["LoraOptions", "SFTModule", "WarmupDecayLR", "step_normalized_loss", "token_loss_sum"]
