"""The batch contract between the data side (collators, `MicroBatchDataset`) and the model side (`SFTModule`,
its losses, sequence parallelism).

Labels are aligned with ``input_ids`` (the Hugging Face convention): position ``t`` predicts ``labels[t + 1]``,
and a label is `IGNORE_INDEX` exactly where the token is not a training target. A batch is a plain dict
(Lightning moves its tensors to the device); `TextBatch` and `VisionBatch` name its keys and what they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch

#: The label of a position that is not trained (PyTorch's ``cross_entropy`` default ``ignore_index``).
IGNORE_INDEX = -100


class TextBatch(TypedDict, total=False):
    """A micro-batch of text rows, padded ``(rows, length)`` or packed ``(1, total length)``.

    Attributes:
        input_ids: Token ids.
        labels: Aligned labels, `IGNORE_INDEX` where not trained (padding and each packed row's first token).
        attention_mask: 1 on real tokens, 0 on padding (padded batches only; packed batches have none).
        position_ids: Positions restarting at 0 for every packed row (packed batches only).
        target_index: Flat positions into ``(rows * length)`` that predict a trained token (host-computed).
        target_ids: The tokens those positions predict.
        step_trained_tokens: Trained tokens of the whole optimizer step (all micro-batches, all ranks): the
            denominator of the per-token mean loss. A plain int.
        step_tokens: All tokens of the optimizer step (for logging). A plain int.
        row_lengths: Lengths of the packed rows, in order (packed batches that need per-row work).
        shift_labels: ``labels`` shifted left by one over the whole sequence, before a sequence-parallel
            split (`lit_sft.model.sequence_parallel.shard_batch`; such batches only).
        cu_seq_lens: Cumulative row offsets of a packed batch, ``[0, len0, len0 + len1, ...]`` (int32, computed
            on the host): what variable-length attention kernels take instead of a mask.
        max_row_length: The longest packed row. A plain int.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    target_index: torch.Tensor
    target_ids: torch.Tensor
    step_trained_tokens: int
    step_tokens: int
    row_lengths: list[int]
    shift_labels: torch.Tensor
    cu_seq_lens: torch.Tensor
    max_row_length: int


class VisionBatch(TextBatch, total=False):
    """A micro-batch of image + text rows: a `TextBatch` plus the image inputs of the model.

    A text-only batch is a valid `VisionBatch`: missing token types are text (0), a packed row without
    ``row_images`` has no image.

    Attributes:
        mm_token_type_ids: Per token, 0 for text and 1 for an image placeholder.
        row_images: Number of images of each packed row, in order.
        pixel_values: The image processor's output for every image of the batch, in order.
        image_grid_thw: Each image's (time, height, width) patch grid (Qwen2-VL family).
        image_sizes: Each image's size (LLaVA family).
        pixel_attention_mask: Which pixels are real (families that pad images).
    """

    mm_token_type_ids: torch.Tensor
    row_images: list[int]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    image_sizes: torch.Tensor
    pixel_attention_mask: torch.Tensor


#: Batch keys that are model inputs of vision-language models besides ids, mask and positions.
VISION_INPUTS = ("pixel_values", "image_grid_thw", "image_sizes", "mm_token_type_ids", "pixel_attention_mask")


def target_positions(
    hidden: torch.Tensor, labels: torch.Tensor, shifted: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states that predict a target, and their targets: ``(N, hidden)`` and ``(N,)``.

    Position ``t`` predicts ``labels[t + 1]`` (``labels[t]`` when ``shifted``); positions without a target
    are dropped, so the LM head runs on targets only (a fraction of the tokens in SFT, where prompts are
    masked).
    """
    next_labels = labels if shifted else labels[:, 1:]
    mask = next_labels != IGNORE_INDEX
    return (hidden if shifted else hidden[:, :-1])[mask], next_labels[mask]


def row_offsets(row_lengths: Sequence[int]) -> torch.Tensor:
    """Cumulative offsets ``[0, len0, len0 + len1, ...]`` of packed rows (int32, as the attention kernels take
    them): a packed batch's ``cu_seq_lens``."""
    offsets = torch.zeros(len(row_lengths) + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(torch.as_tensor(list(row_lengths), dtype=torch.int32), dim=0)
    return offsets


def packed_batch(rows: Sequence[torch.Tensor]) -> TextBatch:
    """Rows ``(1, length)`` packed as the data side packs them: one ``(1, total)`` sequence, positions
    restarting per row, no attention mask. The probe of the packing check (`lit_sft.model.hf`)."""
    device = rows[0].device
    lengths = [int(row.shape[1]) for row in rows]
    return {
        "input_ids": torch.cat(list(rows), dim=1),
        "position_ids": torch.cat([torch.arange(row.shape[1], device=device) for row in rows])[None],
        "row_lengths": lengths,
        "cu_seq_lens": row_offsets(lengths).to(device),
        "max_row_length": max(lengths),
    }
