"""Token-level loss and its normalisation.

The training loss of an optimizer step is the sum of the token losses over every target token of the
step (all micro-batches, all ranks) divided by the number of those tokens, so that every trained token
weighs the same whatever the micro-batch size, gradient accumulation or world size. Each
micro-batch therefore returns a *sum*; `step_normalized_loss` scales it so that, after Lightning divides
by ``accumulate_grad_batches`` and DDP/FSDP average gradients over ranks, the gradient is exactly that of
the step's per-token mean. Averaging per-micro-batch means instead (what transformers did until 2024 and
LitGPT still does) weights a token by how many targets its micro-batch happened to have.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lit_sft.data.tokenize import IGNORE_INDEX


def token_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, shifted: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropies over target positions, and the number of targets.

    Args:
        logits: ``(batch, seq, vocab)`` logits for every position.
        labels: ``(batch, seq)`` labels aligned with the inputs (``IGNORE_INDEX`` where not trained);
            position ``t`` of ``logits`` predicts ``labels[t + 1]``.
        shifted: ``labels`` are already shifted (position ``t`` predicts ``labels[t]``), as in a slice of a
            sequence split across ranks.

    Returns:
        The fp32 loss sum (a scalar that backpropagates) and the target count (an int64 scalar).
    """
    shifted_labels = labels if shifted else labels[:, 1:]
    targets = shifted_labels != IGNORE_INDEX
    # Only target positions are upcast to fp32, not the whole (batch, seq, vocab) tensor.
    target_logits = (logits if shifted else logits[:, :-1])[targets].float()
    loss_sum = F.cross_entropy(target_logits, shifted_labels[targets], reduction="sum")
    return loss_sum, targets.sum()


def step_normalized_loss(
    loss_sum: torch.Tensor, step_target_tokens: int, accumulate_grad_batches: int, world_size: int
) -> torch.Tensor:
    """The micro-batch loss to backpropagate so that the step's gradient is that of its per-token mean.

    Lightning divides each micro-batch loss by ``accumulate_grad_batches`` and data-parallel strategies
    average gradients over ``world_size`` ranks; both are undone here, and the sum is divided by the
    step's target count instead.
    """
    return loss_sum * (accumulate_grad_batches * world_size / max(step_target_tokens, 1))


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


def _chunk_loss(
    hidden: torch.Tensor, targets: torch.Tensor, logits_fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    return F.cross_entropy(logits_fn(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy_sum(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Sum of cross-entropies of ``logits_fn(hidden)`` against ``targets``, never holding more than
    ``chunk_size`` rows of vocabulary-sized logits: each chunk's logits are recomputed in the backward
    pass instead of being kept (activation checkpointing per chunk).

    Args:
        hidden: ``(N, hidden)`` hidden states of target positions.
        targets: ``(N,)`` target ids.
        logits_fn: The LM head (and any logit post-processing).
        chunk_size: Rows per chunk.
    """
    if hidden.shape[0] == 0:
        # A micro-batch with no target (the padding micro-batch a short rank gets) must still put every
        # parameter in the graph: an untied LM head without a gradient on one rank hangs DDP's all-reduce
        # and breaks FSDP's reduce-scatter. The head on zero rows costs nothing.
        return logits_fn(hidden).float().sum() * 0.0
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        chunk, chunk_targets = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and chunk.requires_grad:
            total = total + checkpoint(_chunk_loss, chunk, chunk_targets, logits_fn, use_reentrant=False)
        else:
            total = total + _chunk_loss(chunk, chunk_targets, logits_fn)
    return total
