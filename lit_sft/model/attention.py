"""``attn_implementation: varlen``: padding-free (packed) attention from PyTorch itself, no flash-attn package.

A packed batch is one ``(1, total)`` sequence of rows laid end to end. The collator computes, on the host,
the rows' cumulative offsets ``cu_seq_lens`` (``[0, len0, len0 + len1, ...]``, int32) and the longest row;
they reach the attention function through the model's forward as transformers' own flash-attention keyword
arguments (``cu_seq_lens_q/k``, ``max_length_q/k``), so the forward needs no device sync to find the rows.

Where the attention runs, by what the machine has:

* CUDA, bf16/fp16, ``torch.nn.attention.varlen.varlen_attn`` (PyTorch 2.10+): FlashAttention's variable-length
  kernel, O(total) memory, no mask at all. Its ``window_size`` (sliding windows) came in a later release and
  its ``enable_gqa`` in 2.13: a sliding-window model goes to ``flex`` where the kernel has no window, and
  key/value heads are repeated for grouped-query attention where it has no ``enable_gqa``.
* CUDA without it: ``flex_attention`` with a document block mask built once per forward pass, straight from
  the row offsets (O((total/128)²) booleans, never a total×total mask).
* Otherwise (CPU; fp32 on CUDA; attention dropout in training): SDPA row by row on CPU (O(row²) memory), or
  SDPA with a block-diagonal mask on CUDA (both exact, the second O(total²) like the ``sdpa`` path).

Under autocast, query, key and value are first cast to autocast's dtype, as transformers' flash-attention path
does: the projections run in bf16, but RoPE multiplies query and key by float32 tables, and the kernels refuse
(or, flex's backward, fail on) mixed dtypes. The choice is `choose_packed_kernel`, a pure function of the
device, the dtypes and what this PyTorch has, so that a CPU test can see what CUDA would pick.

Batches without ``cu_seq_lens`` work too: padded batches and generation get SDPA with transformers' own
padding mask (`varlen_mask`), and a packed batch without offsets has them derived from its ``position_ids``
(a device sync, once per forward pass; the collator's offsets avoid it). Packed batches never get an O(L²)
mask. What remains of transformers' mask preparation for them is its look for packed rows in
``position_ids``, one small sync per forward pass (its ``sdpa`` and ``flash_attention_2`` paths make it too).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import itertools
import logging
from typing import Any

import torch
import torch.nn.functional as F

from lit_sft.batch import row_offsets
from lit_sft.errors import ConfigError

log = logging.getLogger("lit_sft")

#: The registered name (``model.attn_implementation: varlen``).
VARLEN = "varlen"
#: Attention implementations that read the collator's row offsets (the rest ignore them).
READS_ROW_OFFSETS = (VARLEN, "flash_attention_2", "flash_attention_3")


def offsets_kwargs(cu_seq_lens: torch.Tensor, max_row_length: int) -> dict[str, Any]:
    """The model-forward keyword arguments that carry a packed batch's rows (`lit_sft.batch.row_offsets`) to
    the attention function."""
    return {
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": int(max_row_length),
        "max_length_k": int(max_row_length),
    }


@functools.cache
def _varlen_kernel() -> tuple[Any, frozenset[str]] | None:
    """PyTorch's ``varlen_attn`` and the names of its parameters (they changed between releases), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def has_varlen_kernel() -> bool:
    """Whether this PyTorch has ``torch.nn.attention.varlen.varlen_attn``."""
    return _varlen_kernel() is not None


@functools.cache
def _has_flash_attn_package() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_attention(requested: str | None, packing: bool = False, on_cuda: bool = False) -> str:
    """The attention implementation to load the model with: ``requested``, or for ``auto``: with packed
    batches, on a CUDA GPU ``flash_attention_2`` when the flash-attn package is installed, else ``varlen``
    (also on CPU, where it runs SDPA row by row: O(row²) memory where ``sdpa`` builds a total×total mask);
    ``sdpa`` for padded batches."""
    if requested not in (None, "auto"):
        return requested
    if packing:
        return "flash_attention_2" if on_cuda and _has_flash_attn_package() else VARLEN
    return "sdpa"


def _repeat_heads(tensor: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """Key/value heads repeated for grouped-query attention (``dim`` is the head dimension)."""
    return (
        tensor
        if tensor.shape[dim] == heads
        else tensor.repeat_interleave(heads // tensor.shape[dim], dim=dim)
    )


def _band(q_length: int, kv_length: int, sliding_window: int | None, device: torch.device) -> torch.Tensor:
    """Causal mask ``(q, kv)`` aligned at the bottom right (queries are the last ``q`` positions), optionally
    limited to a sliding window."""
    query = torch.arange(q_length, device=device)[:, None] + (kv_length - q_length)
    key = torch.arange(kv_length, device=device)[None, :]
    allowed = key <= query
    if sliding_window:
        allowed &= key > query - sliding_window
    return allowed


def _unpacked(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None,
    sliding_window: int | None,
    is_causal: bool,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA for batches that are not packed: padded rows (a 2D mask), generation with a KV cache."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_length, kv_length = query.shape[2], key.shape[2]
    mask = attention_mask  # transformers' sdpa mask (`varlen_mask`) where there is padding
    if attention_mask is None and is_causal and q_length > 1 and (q_length != kv_length or sliding_window):
        mask = _band(q_length, kv_length, sliding_window, query.device)[None, None]
    return sdpa_attention_forward(
        module,
        query,
        key,
        value,
        mask,
        dropout=dropout,
        scaling=scaling,
        is_causal=is_causal and mask is None,
        **kwargs,
    )


#: The last positions tensor whose offsets were derived, and them: every layer of a forward pass shares it.
_DERIVED: list[Any] = []


def _offsets_from_positions(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Row offsets of a packed sequence from positions restarting at 0 (syncs with the device, once per
    forward pass: the layers share the positions tensor, which is kept here so that its identity is not reused)."""
    if _DERIVED and _DERIVED[0] is position_ids and _DERIVED[1] == position_ids._version:
        return _DERIVED[2]
    positions = position_ids.reshape(-1) if position_ids.dim() == 2 else position_ids[0].reshape(-1)
    starts = torch.nonzero(positions == 0).flatten()
    ends = torch.cat([starts[1:], torch.tensor([positions.numel()], device=starts.device)])
    lengths = (ends - starts).tolist()
    derived = (row_offsets(lengths).to(positions.device), max(lengths))
    _DERIVED[:] = [position_ids, position_ids._version, derived]
    return derived


def _varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    max_length: int,
    scaling: float,
    causal: bool,
    sliding_window: int | None,
) -> torch.Tensor:
    """``varlen_attn`` on ``(total, heads, dim)`` tensors, whatever its release's signature."""
    kernel, parameters = _varlen_kernel()  # type: ignore[misc]
    kwargs: dict[str, Any] = {}
    if "enable_gqa" in parameters:
        kwargs["enable_gqa"] = key.shape[1] != query.shape[1]
    else:
        key, value = _repeat_heads(key, query.shape[1], 1), _repeat_heads(value, query.shape[1], 1)
    if "scale" in parameters:
        kwargs["scale"] = scaling
    else:  # the kernel's own scale is dim ** -0.5: fold the difference into the queries
        query = query * (scaling * query.shape[-1] ** 0.5)
    if "window_size" in parameters:
        kwargs["window_size"] = ((sliding_window - 1) if sliding_window else -1, 0 if causal else -1)
    elif sliding_window:  # `choose_packed_kernel` never sends one here: losing it would be silent
        raise ValueError("this PyTorch's varlen_attn has no window_size for a sliding window")
    else:
        kwargs["is_causal"] = causal
    offsets = offsets.to(device=query.device, dtype=torch.int32)
    return kernel(query, key, value, offsets, offsets, max_length, max_length, **kwargs)


@functools.cache
def _has_flex_attention() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


@functools.cache
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    # Automatic dynamic shapes: packed batches differ in length, which must not recompile every batch.
    return torch.compile(flex_attention)


#: flex_attention's block size (``create_block_mask``'s default), in positions along query and key.
FLEX_BLOCK = 128


def document_block_mask(
    offsets: torch.Tensor,
    total: int,
    causal: bool,
    sliding_window: int | None,
    device: torch.device,
    block: int = FLEX_BLOCK,
) -> Any:
    """flex_attention's ``BlockMask`` keeping each packed row to itself, built from the row offsets alone:
    the same mask as ``create_block_mask`` (uncompiled, it materialises a total×total mask) with
    O((total/block)²) memory, and no device sync.

    A pair of blocks is skipped when no query of the one may attend to a key of the other, runs without its
    mask (full) when all may, and is masked by ``mask_mod`` otherwise. Rows are contiguous, so two different
    blocks share at most one row, the one running from the earlier block's last position to the later
    block's first, and whether any or all of their pairs are allowed follows from the blocks' end points.

    Args:
        offsets: The rows' cumulative offsets ``[0, len0, len0 + len1, ..., total]``.
        total: The packed sequence's length.
        causal: Keys after the query are masked.
        sliding_window: Keys at or beyond this distance before the query are masked.
        device: Where the attention runs.
        block: The block size (queries and keys).
    """
    from torch.nn.attention.flex_attention import BlockMask

    ends = offsets[1:].to(device=device, dtype=torch.int64)
    document = torch.searchsorted(ends, torch.arange(total, device=device), right=True)
    blocks = -(-total // block)
    first = torch.arange(blocks, device=device) * block  # each block's first position
    last = torch.clamp(first + block, max=total) - 1  # and its last (the final block may be short)
    whole = (last - first + 1) == block  # padding past ``total`` counts as masked, as in create_block_mask
    q_first, q_last, kv_first, kv_last = first[:, None], last[:, None], first[None, :], last[None, :]
    # Two blocks share a row when the earlier one's last position and the later one's first are in it (on
    # the diagonal, the block's own ends: the diagonal always has pairs, ``q == k``, whatever that says).
    before = kv_last < q_first
    shared = torch.where(
        before,
        document[last][None, :] == document[first][:, None],
        document[last][:, None] == document[first][None, :],
    )
    diagonal = q_first == kv_first
    one_row = (document[first][:, None] == document[last][:, None]) & (
        document[first][None, :] == document[last][None, :]
    )
    any_allowed = shared | diagonal
    same_row = document[first][:, None] == document[first][None, :]
    all_allowed = whole[:, None] & whole[None, :] & one_row & same_row
    if causal:
        any_allowed &= before | diagonal
        all_allowed &= kv_last <= q_first
    if sliding_window:
        # Some pair q - window < k: the latest key against the earliest query; every pair: the earliest key
        # against the latest query.
        any_allowed &= kv_last > q_first - sliding_window
        all_allowed &= kv_first > q_last - sliding_window

    def keep(batch: Any, head: Any, q_index: Any, kv_index: Any) -> Any:
        allowed = document[q_index] == document[kv_index]
        if causal:
            allowed = allowed & (kv_index <= q_index)
        if sliding_window:
            allowed = allowed & (kv_index > q_index - sliding_window)
        return allowed

    def ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query block, how many key blocks and which (first), as ``BlockMask`` takes them."""
        dense = dense.to(torch.int32)[None, None]
        indices = torch.argsort(dense, dim=-1, descending=True, stable=True)
        return dense.sum(-1).to(torch.int32), indices.to(torch.int32)

    partial_counts, partial_indices = ordered(any_allowed & ~all_allowed)
    full_counts, full_indices = ordered(all_allowed)
    return BlockMask.from_kv_blocks(
        partial_counts,
        partial_indices,
        full_counts,
        full_indices,
        BLOCK_SIZE=block,
        mask_mod=keep,
        seq_lengths=(total, total),
    )


#: The last block mask, with the offsets tensor it was built from (held, so that its id cannot be reused by a
#: later batch's offsets and hand that batch a stale mask).
_FLEX_MASKS: dict[tuple[int, int | None, bool], tuple[torch.Tensor, Any]] = {}


def _flex(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    scaling: float,
    causal: bool,
    sliding_window: int | None,
) -> torch.Tensor:
    """``flex_attention`` with a document mask; ``(1, heads, total, dim)`` in and out. The block mask is built
    once per forward pass (the layers share the offsets tensor) and kept until the next one."""
    total = query.shape[2]
    cache_key = (total, sliding_window, causal)
    cached = _FLEX_MASKS.get(cache_key)
    block_mask = cached[1] if cached is not None and cached[0] is offsets else None
    if block_mask is None:
        block_mask = document_block_mask(offsets, total, causal, sliding_window, query.device)
        _FLEX_MASKS.clear()
        _FLEX_MASKS[cache_key] = (offsets, block_mask)
    return _compiled_flex()(
        query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]
    )


def _rows(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    scaling: float,
    causal: bool,
    sliding_window: int | None,
    dropout: float,
) -> torch.Tensor:
    """Exact fallback on ``(1, heads, total, dim)``: SDPA row by row (CPU: the offsets are host values) or, on
    an accelerator, one SDPA with a block-diagonal mask (no sync)."""
    heads = query.shape[1]
    key, value = _repeat_heads(key, heads, 1), _repeat_heads(value, heads, 1)
    total = query.shape[2]
    if offsets.device.type == "cpu" and query.device.type == "cpu":
        bounds = offsets.tolist()
        outputs = []
        for start, end in itertools.pairwise(bounds):
            mask = _band(end - start, end - start, sliding_window, query.device) if sliding_window else None
            outputs.append(
                F.scaled_dot_product_attention(
                    query[:, :, start:end],
                    key[:, :, start:end],
                    value[:, :, start:end],
                    attn_mask=mask,
                    dropout_p=dropout,
                    is_causal=causal and mask is None,
                    scale=scaling,
                )
            )
        return torch.cat(outputs, dim=2)
    document = torch.searchsorted(
        offsets[1:].to(query.device), torch.arange(total, device=query.device), right=True
    )
    mask = document[:, None] == document[None, :]
    if causal:
        mask &= _band(total, total, sliding_window, query.device)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask[None, None], dropout_p=dropout, scale=scaling
    )


#: Dtypes the packed GPU kernels (``varlen_attn``, ``flex_attention`` in lit_sft's use) run in.
HALF_DTYPES = (torch.float16, torch.bfloat16)


def choose_packed_kernel(
    device_type: str,
    dtypes: tuple[torch.dtype, ...],
    varlen_parameters: frozenset[str] | None,
    has_flex: bool,
    dropout: float = 0.0,
    sliding_window: int | None = None,
) -> str:
    """Which kernel runs a packed batch: ``varlen``, ``flex`` or ``sdpa`` (the exact fallback).

    Args:
        device_type: Where the attention runs (``cuda``, ``cpu``...): only CUDA has the packed kernels.
        dtypes: The dtypes of query, key and value as the kernel would receive them.
        varlen_parameters: The parameter names of this PyTorch's ``varlen_attn``, or None when it has none.
        has_flex: Whether this PyTorch has ``flex_attention``.
        dropout: Attention dropout (neither packed kernel has it).
        sliding_window: The layer's sliding window, if any.
    """
    if device_type != "cuda" or dropout > 0:
        return "sdpa"
    # Mixed dtypes (no autocast to unify them) and float32 go to SDPA: varlen_attn is half precision only, and
    # a float32 flex would compile for a start-up probe whose shapes are never seen again.
    if len(set(dtypes)) != 1 or dtypes[0] not in HALF_DTYPES:
        return "sdpa"
    if varlen_parameters is not None and (not sliding_window or "window_size" in varlen_parameters):
        return "varlen"
    return "flex" if has_flex else "sdpa"


def packed_kernel(
    query: torch.Tensor,
    dropout: float = 0.0,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> str:
    """`choose_packed_kernel` for these tensors on this PyTorch (key and value default to the query's dtype)."""
    dtypes = tuple(t.dtype for t in (query, key, value) if t is not None)
    kernel = _varlen_kernel() if has_varlen_kernel() else None
    return choose_packed_kernel(
        query.device.type,
        dtypes,
        kernel[1] if kernel is not None else None,
        _has_flex_attention(),
        dropout,
        sliding_window,
    )


def autocast_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value in autocast's dtype where autocast is on for their device; as they are otherwise."""
    device_type = query.device.type
    if not torch.is_autocast_enabled(device_type):
        return query, key, value
    dtype = torch.get_autocast_dtype(device_type)
    return query.to(dtype), key.to(dtype), value.to(dtype)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function (``AttentionInterface``): ``(batch, heads, length, dim)`` query, key
    and value in, ``(batch, length, heads, dim)`` out.

    Raises:
        ConfigError: For logit soft-capping or attention sinks, which these kernels do not have.
    """
    if softcap or kwargs.get("s_aux") is not None:
        raise ConfigError(
            "model.attn_implementation=varlen does not support attention logit soft-capping or sinks "
            "(Gemma 2, gpt-oss): use flash_attention_2, flex_attention or eager"
        )
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    dropout = dropout if module.training else 0.0
    offsets, longest = cu_seq_lens_q, max_length_q
    position_ids = kwargs.get("position_ids")
    if (
        offsets is None
        and attention_mask is None
        and position_ids is not None
        and query.shape[0] == 1
        and query.shape[2] == key.shape[2] > 1
        and position_ids.shape[-1] == query.shape[2]
    ):
        offsets, longest = _offsets_from_positions(position_ids)
        if offsets.numel() == 2:  # one row: plain causal attention (probes, unpacked single sequences)
            offsets = None
    if offsets is None or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        kwargs.pop("position_ids", None)
        return _unpacked(
            module, query, key, value, attention_mask, dropout, scaling, sliding_window, causal, **kwargs
        )
    query, key, value = autocast_inputs(query, key, value)
    kernel = packed_kernel(query, dropout, key, value, sliding_window)
    if kernel == "varlen":
        output = _varlen(
            query[0].transpose(0, 1),
            key[0].transpose(0, 1),
            value[0].transpose(0, 1),
            offsets,
            int(longest if longest is not None else query.shape[2]),
            scale,
            causal,
            sliding_window,
        )
        return output[None], None
    if kernel == "flex":
        output = _flex(query, key, value, offsets, scale, causal, sliding_window)
    else:
        output = _rows(query, key, value, offsets, scale, causal, sliding_window, dropout)
    return output.transpose(1, 2).contiguous(), None


def varlen_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """The mask function of ``varlen`` (transformers' ``AttentionMaskInterface``): SDPA's mask where there is a
    padding mask, none otherwise (packed rows are kept apart by their offsets, causality by the kernel)."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)  # type: ignore[misc]  # args never hold it


def register() -> None:
    """Register ``varlen`` with transformers' ``AttentionInterface`` and ``AttentionMaskInterface``
    (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, varlen_mask)


register()
