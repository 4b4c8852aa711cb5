"""lit_sft: supervised fine-tuning of Hugging Face causal LMs (and vision-language models) on PyTorch Lightning."""

__version__ = "0.1.0"

from lit_sft.data import SFTDataModule
from lit_sft.data.vision import VisionSFTDataModule
from lit_sft.gsm8k.synthetic import SyntheticGSM8KDataModule
from lit_sft.model import LoraOptions, LossOptions, QuantizationOptions, SFTModule, WarmupDecayLR
from lit_sft.model.vision import VisionSFTModule

__all__ = [
    "LoraOptions",
    "LossOptions",
    "QuantizationOptions",
    "SFTDataModule",
    "SFTModule",
    "SyntheticGSM8KDataModule",
    "VisionSFTDataModule",
    "VisionSFTModule",
    "WarmupDecayLR",
    "__version__",
]
