"""Collating tokenized rows into padded micro-batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lit_sft.batch import IGNORE_INDEX, TextBatch, row_offsets


class PaddingCollator:
    """Right-pads rows to the longest in the micro-batch.

    Padding is masked by *position*: ``labels`` are ``-100`` and ``attention_mask`` is 0 past each row's
    end, whatever the pad id, so a pad id equal to EOS never hides a trained EOS.

    Args:
        pad_token_id: Id written into padded positions of ``input_ids``.
        pad_to_multiple_of: Round the padded length up to a multiple of this (8 suits tensor cores).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> TextBatch:
        """Pad ``input_ids`` and ``labels`` (lists of rows) into ``input_ids``, ``attention_mask``, ``labels``."""
        length = max(len(row) for row in input_ids)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_ids = torch.full((len(input_ids), length), self.pad_token_id, dtype=torch.long)
        batch_labels = torch.full((len(input_ids), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(input_ids), length), dtype=torch.long)
        for row, (ids, row_labels) in enumerate(zip(input_ids, labels, strict=True)):
            batch_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            batch_labels[row, : len(ids)] = torch.as_tensor(row_labels, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": batch_ids, "attention_mask": attention_mask, "labels": batch_labels}


class PackedCollator:
    """Concatenates rows into one padding-free sequence of shape ``(1, total_tokens)``.

    ``position_ids`` restart at 0 for every row, which is how transformers' attention implementations
    (flash-attention varlen, SDPA, flex and eager block masks) keep rows from attending to each other
    when no ``attention_mask`` is given and no KV cache is used. Each row's first label is masked: it
    would otherwise be "predicted" from the previous row's last token (in a padded batch a row's first
    label is never a target either, so packed and padded losses are equal).

    The rows' offsets (``cu_seq_lens``) and the longest row (``max_row_length``) are computed here, on the
    host, for variable-length attention kernels (`lit_sft.model.attention`): the forward pass then never asks
    the device where rows start.
    """

    def __call__(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> TextBatch:
        """Pack ``input_ids`` and ``labels`` (lists of rows) into ``input_ids``, ``labels``, ``position_ids``,
        ``cu_seq_lens`` and ``max_row_length``."""
        ids = torch.as_tensor([token for row in input_ids for token in row], dtype=torch.long)
        row_labels = [torch.as_tensor(row, dtype=torch.long) for row in labels]
        for row in row_labels:
            row[0] = IGNORE_INDEX
        positions = torch.cat([torch.arange(len(row), dtype=torch.long) for row in input_ids])
        return {
            "input_ids": ids[None],
            "labels": torch.cat(row_labels)[None],
            "position_ids": positions[None],
            "cu_seq_lens": row_offsets([len(row) for row in input_ids]),
            "max_row_length": max(len(row) for row in input_ids),
        }


def add_targets(batch: TextBatch) -> TextBatch:
    """Add ``target_index`` (flat positions into ``(batch * seq)`` that predict a trained token) and
    ``target_ids`` (those tokens), computed here, on the host.

    The loss gathers the hidden states at these positions with ``index_select``; selecting them with a
    boolean mask on the GPU instead would make the host wait for the device to count them, every step.
    """
    labels = batch["labels"]
    following = torch.full_like(labels, IGNORE_INDEX)
    following[:, :-1] = labels[:, 1:]  # position t predicts labels[t + 1]
    flat = following.reshape(-1)
    batch["target_index"] = torch.nonzero(flat != IGNORE_INDEX).flatten()
    batch["target_ids"] = flat[batch["target_index"]]
    return batch
