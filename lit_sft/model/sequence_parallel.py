"""Ulysses sequence parallelism: one long (packed) sequence split across the ranks of a group.

Each rank of a sequence-parallel group holds a contiguous slice of the sequence through the whole model;
attention is the only place that needs the full sequence, so around it an all-to-all trades the sequence
split for a head split (each rank attends over the full sequence for its share of the heads), and a second
all-to-all trades back (DeepSpeed-Ulysses, arXiv:2309.14509). Rotary embeddings use each token's global
position, labels are shifted before the split (a slice's last token predicts the next slice's first), and
each rank's loss is a partial sum that the per-step normalisation adds up with everything else.

The ranks of a group see the same micro-batches: the data-parallel size is ``world / sequence_parallel_size``.
It works with transformers' ``sdpa``, ``eager`` and ``flash_attention_2`` kernels and lit_sft's ``varlen``
(`lit_sft.model.attention`) as the inner attention; the variable-length kernels get the full sequence's row
offsets instead of a mask.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from lit_sft.batch import IGNORE_INDEX, TextBatch
from lit_sft.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

_GROUPS: dict[int, Any] = {}
#: Attention implementations Ulysses can run inside.
INNER_ATTENTION = ("sdpa", "varlen", "eager", "flash_attention_2", "flash_attention_3")


def sequence_parallel_group(size: int) -> Any:
    """This rank's group of ``size`` consecutive ranks (every rank creates every group, in the same order)."""
    if size not in _GROUPS:
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % size:
            raise ConfigError(
                f"model.sequence_parallel_size={size} must divide the number of processes ({world})"
            )
        mine = None
        for start in range(0, world, size):
            group = dist.new_group(list(range(start, start + size)))
            if start <= rank < start + size:
                mine = group
        _GROUPS[size] = mine
    return _GROUPS[size]


def _all_to_all(tensor: torch.Tensor, scatter_dim: int, gather_dim: int, group: Any) -> torch.Tensor:
    size = dist.get_world_size(group)
    sent = torch.stack([chunk.contiguous() for chunk in torch.tensor_split(tensor, size, dim=scatter_dim)])
    received = torch.empty_like(sent)
    dist.all_to_all_single(received, sent, group=group)
    return torch.cat(list(received.unbind(0)), dim=gather_dim)


class _SequenceAllToAll(torch.autograd.Function):
    """All-to-all that splits ``scatter_dim`` across the group and concatenates along ``gather_dim``; its
    gradient is the reverse all-to-all."""

    @staticmethod
    def forward(
        ctx: Any, tensor: torch.Tensor, scatter_dim: int, gather_dim: int, group: Any
    ) -> torch.Tensor:
        ctx.scatter_dim, ctx.gather_dim, ctx.group = scatter_dim, gather_dim, group
        return _all_to_all(tensor, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return _all_to_all(grad.contiguous(), ctx.gather_dim, ctx.scatter_dim, ctx.group), None, None, None


def all_to_all(tensor: torch.Tensor, scatter_dim: int, gather_dim: int, group: Any) -> torch.Tensor:
    """Differentiable all-to-all over ``group``."""
    return _SequenceAllToAll.apply(tensor, scatter_dim, gather_dim, group)


@dataclass
class _Context:
    """What the attention of the current forward pass needs about the full sequence."""

    group: Any
    inner: str
    position_ids: torch.Tensor  # (1, full length)
    mask: torch.Tensor | None  # (1, 1, full, full) block-causal, for mask-based kernels


_CONTEXT: _Context | None = None


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """A boolean ``(1, 1, S, S)`` mask: causal within each packed row (rows start where positions restart)."""
    row = torch.cumsum((position_ids[0] == 0).long(), dim=0)
    positions = torch.arange(position_ids.shape[1], device=position_ids.device)
    causal = positions[None, :] <= positions[:, None]
    return (causal & (row[None, :] == row[:, None]))[None, None]


def ulysses_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention over the full sequence for this rank's share of the heads (a transformers attention function)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    context = _CONTEXT
    assert context is not None, "sequence-parallel attention outside a sequence-parallel forward pass"
    size = dist.get_world_size(context.group)
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads % size or kv_heads % size:
        raise ConfigError(
            f"sequence parallelism of {size} needs head counts divisible by it ({heads} query, {kv_heads} key/value heads)"
        )
    # (batch, heads, local sequence, dim) -> (batch, heads / size, full sequence, dim)
    query, key, value = (
        all_to_all(t, scatter_dim=1, gather_dim=2, group=context.group) for t in (query, key, value)
    )
    mask: torch.Tensor | None
    if context.inner == "eager":  # each model family defines its own eager attention, with an additive mask
        assert context.mask is not None, "shard_batch builds the mask for every inner attention but flash"
        inner = sys.modules[type(module).__module__].eager_attention_forward
        mask = torch.zeros(context.mask.shape, dtype=query.dtype, device=query.device)
        mask.masked_fill_(~context.mask, torch.finfo(query.dtype).min)
    else:
        inner = ALL_ATTENTION_FUNCTIONS[context.inner]
        mask = context.mask
    if _takes_offsets(context.inner):
        # Row offsets of the full sequence (cu_seq_lens_q/k from shard_batch) or, without them, its positions.
        kwargs["position_ids"] = context.position_ids
    kwargs.pop("is_causal", None)
    # Mask-based kernels get causality from the block-causal mask; variable-length ones need the flag.
    causal = _takes_offsets(context.inner) and getattr(module, "is_causal", True)
    output, _ = inner(module, query, key, value, mask, is_causal=causal, **kwargs)
    # (batch, full sequence, heads / size, dim) -> (batch, local sequence, heads, dim)
    return all_to_all(output, scatter_dim=1, gather_dim=2, group=context.group), None


def _takes_offsets(inner: str) -> bool:
    """Whether ``inner`` is a variable-length kernel (row offsets or positions) rather than a mask-based one."""
    return inner.startswith("flash") or inner == "varlen"


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def enable(model: PreTrainedModel, inner: str) -> str:
    """Route the model's attention through `ulysses_attention` (around ``inner``); returns the new name."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if inner not in INNER_ATTENTION:
        raise ConfigError(
            f"sequence parallelism works with sdpa, varlen, eager or flash_attention_2/3, not {inner!r}"
        )
    name = f"ulysses_{inner}"
    ALL_ATTENTION_FUNCTIONS.register(name, ulysses_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, _no_mask)  # the full-sequence mask is built here instead
    model.set_attn_implementation(name)
    return name


def shard_batch(batch: TextBatch, group: Any, inner: str) -> dict[str, Any]:
    """This rank's slice of a packed batch, with labels shifted over the whole sequence first.

    The sequence is padded to a multiple of the group size with an extra, untrained row (positions from 0,
    labels masked), so every rank gets the same length.
    """
    global _CONTEXT
    if batch.get("attention_mask") is not None and batch["input_ids"].shape[0] > 1:
        raise ConfigError("sequence parallelism needs packed batches: set data.packing=true")
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    input_ids = batch["input_ids"]
    length = input_ids.shape[1]
    position_ids = batch.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(length, device=input_ids.device)[None]
    shift_labels = torch.cat(
        [batch["labels"][:, 1:], torch.full_like(batch["labels"][:, :1], IGNORE_INDEX)], dim=1
    )
    padding = -length % size
    if padding:
        input_ids = torch.cat([input_ids, torch.zeros_like(input_ids[:, :padding])], dim=1)
        position_ids = torch.cat([position_ids, torch.arange(padding, device=input_ids.device)[None]], dim=1)
        shift_labels = torch.cat(
            [shift_labels, torch.full_like(shift_labels[:, :padding], IGNORE_INDEX)], dim=1
        )
    local = (length + padding) // size
    piece = slice(rank * local, (rank + 1) * local)
    _CONTEXT = _Context(
        group=group,
        inner=inner,
        position_ids=position_ids,
        mask=None if _takes_offsets(inner) else block_causal_mask(position_ids),
    )
    offsets = {}
    if batch.get("cu_seq_lens") is not None:  # the full sequence's rows, the padding row included
        cu_seq_lens = batch["cu_seq_lens"]
        if padding:
            cu_seq_lens = torch.cat([cu_seq_lens, cu_seq_lens[-1:] + padding])
        offsets = {"cu_seq_lens": cu_seq_lens, "max_row_length": max(int(batch["max_row_length"]), padding)}
    return {
        **batch,
        **offsets,
        "input_ids": input_ids[:, piece],
        "position_ids": position_ids[:, piece],
        "shift_labels": shift_labels[:, piece],
        "attention_mask": None,
    }


@contextmanager
def plain_attention(model: PreTrainedModel, inner: str) -> Iterator[None]:
    """Attention without the sequence split, for generation (each rank decodes its own prompts)."""
    current = model.config._attn_implementation
    model.set_attn_implementation(inner)
    try:
        yield
    finally:
        model.set_attn_implementation(current)
