"""Token-level loss and its normalisation.

The training loss of an optimizer step is the sum of the token losses over every target token of the
step (all micro-batches, all ranks) divided by the number of those tokens (design invariant 6). Each
micro-batch therefore returns a *sum*; `step_normalized_loss` scales it so that, after Lightning divides
by ``accumulate_grad_batches`` and DDP/FSDP average gradients over ranks, the gradient is exactly that of
the step's per-token mean. Averaging per-micro-batch means instead (what transformers did until 2024 and
LitGPT still does) weights a token by how many targets its micro-batch happened to have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_sft.data.tokenize import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropies over target positions, and the number of targets.

    Args:
        logits: ``(batch, seq, vocab)`` logits for every position.
        labels: ``(batch, seq)`` labels aligned with the inputs (``IGNORE_INDEX`` where not trained);
            position ``t`` of ``logits`` predicts ``labels[t + 1]``.

    Returns:
        The fp32 loss sum (a scalar that backpropagates) and the target count (an int64 scalar).
    """
    shifted_labels = labels[:, 1:]
    targets = shifted_labels != IGNORE_INDEX
    # Only target positions are upcast to fp32, not the whole (batch, seq, vocab) tensor.
    target_logits = logits[:, :-1][targets].float()
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
