"""The data path: rows -> conversations -> masked token ids -> micro-batches."""

from lit_sft.batch import IGNORE_INDEX
from lit_sft.data.collate import PaddingCollator
from lit_sft.data.conversation import Conversation, FormatOptions, row_to_conversation
from lit_sft.data.datamodule import SFTDataModule
from lit_sft.data.mixture import DataSource
from lit_sft.data.render import ConversationRenderer
from lit_sft.data.sampler import MicroBatch, MicroBatchSampler
from lit_sft.data.tokenize import TokenizeOptions

__all__ = [
    "IGNORE_INDEX",
    "Conversation",
    "ConversationRenderer",
    "DataSource",
    "FormatOptions",
    "MicroBatch",
    "MicroBatchSampler",
    "PaddingCollator",
    "SFTDataModule",
    "TokenizeOptions",
    "row_to_conversation",
]
