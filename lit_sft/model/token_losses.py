"""Per-token loss terms from logits: the negative log-likelihood (or DFT's) summed over target positions,
the per-token metrics summed alongside it (`TOKEN_METRICS`), and the chunked variant that never holds
more than a chunk of vocabulary-sized logits. The `lit_sft.model.loss.TokenLoss` classes call these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lit_sft.batch import IGNORE_INDEX

LossType = Literal["nll", "dft"]
#: The per-token metrics the chunked and plain losses sum besides the loss, in the order of their sums.
TOKEN_METRICS = ("token_accuracy", "entropy")


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


def token_terms(
    logits: torch.Tensor, targets: torch.Tensor, loss_type: LossType = "nll", metrics: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The loss sum over target positions and, with ``metrics``, the sums of `TOKEN_METRICS`.

    Args:
        logits: ``(N, vocab)`` logits of the target positions (upcast to fp32 here).
        targets: ``(N,)`` target ids.
        loss_type: ``nll`` or ``dft`` (see `LossOptions`).
        metrics: Also return ``[number of targets that are the argmax, sum of entropies]`` (detached, fp32).

    Returns:
        The fp32 loss sum (a scalar that backpropagates) and the metric sums (or None).
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(1, targets[:, None]).squeeze(1)
    # DFT: the gradient of -p.detach() * log p is the NLL's scaled by the token's probability.
    loss_sum = (nll * torch.exp(-nll.detach())).sum() if loss_type == "dft" else nll.sum()
    if not metrics:
        return loss_sum, None
    with torch.no_grad():
        correct = (log_probs.argmax(dim=-1) == targets).sum().float()
        entropy = -(log_probs.exp() * log_probs).sum()
    return loss_sum, torch.stack([correct, entropy])


def _chunk_terms(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    loss_type: LossType,
    metrics: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    loss_sum, sums = token_terms(logits_fn(hidden), targets, loss_type, metrics)
    return loss_sum, sums if sums is not None else loss_sum.new_zeros(len(TOKEN_METRICS))


def chunked_token_terms(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int = 4096,
    loss_type: LossType = "nll",
    metrics: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_terms` of ``logits_fn(hidden)``, never holding more than ``chunk_size`` rows of vocabulary-sized
    logits: each chunk's logits are recomputed in the backward pass instead of being kept (activation
    checkpointing per chunk). The metric sums come from the same chunk's logits.

    Args:
        hidden: ``(N, hidden)`` hidden states of target positions.
        targets: ``(N,)`` target ids.
        logits_fn: The LM head (and any logit post-processing).
        chunk_size: Rows per chunk.
        loss_type: ``nll`` or ``dft``.
        metrics: Also return the metric sums (as `token_terms`).
    """
    if hidden.shape[0] == 0:
        # A micro-batch with no target (the padding micro-batch a short rank gets) must still put every
        # parameter in the graph: an untied LM head without a gradient on one rank hangs DDP's all-reduce
        # and breaks FSDP's reduce-scatter. The head on zero rows costs nothing.
        zero = logits_fn(hidden).float().sum() * 0.0
        return zero, (zero.detach().new_zeros(len(TOKEN_METRICS)) if metrics else None)
    total = hidden.new_zeros((), dtype=torch.float32)
    sums = hidden.new_zeros(len(TOKEN_METRICS), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        chunk, chunk_targets = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        arguments = (chunk, chunk_targets, logits_fn, loss_type, metrics)
        if torch.is_grad_enabled() and chunk.requires_grad:
            # Early stopping of the non-reentrant recomputation ends it once the loss's saved tensors are back,
            # before the (gradient-free) metrics.
            chunk_loss, chunk_sums = checkpoint(_chunk_terms, *arguments, use_reentrant=False)
        else:
            chunk_loss, chunk_sums = _chunk_terms(*arguments)
        total = total + chunk_loss
        sums = sums + chunk_sums.detach()
    return total, (sums if metrics else None)


def chunked_cross_entropy_sum(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int = 4096,
) -> torch.Tensor:
    """The summed cross-entropy of `chunked_token_terms` (no metrics)."""
    return chunked_token_terms(hidden, targets, logits_fn, chunk_size, "nll", metrics=False)[0]
