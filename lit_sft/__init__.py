"""lit_sft: supervised fine-tuning of Hugging Face causal LMs on PyTorch Lightning."""

__version__ = "0.1.0"

from lit_sft.data import SFTDataModule
from lit_sft.data.synthetic import SyntheticGSM8KDataModule
from lit_sft.model import LoraOptions, SFTModule, WarmupDecayLR

__all__ = [
    "LoraOptions",
    "SFTDataModule",
    "SFTModule",
    "SyntheticGSM8KDataModule",
    "WarmupDecayLR",
    "__version__",
]
