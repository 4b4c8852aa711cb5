"""Token-level loss and its normalisation.

The training loss of an optimizer step is the sum of the token losses over every target token of the
step (all micro-batches, all ranks) divided by the number of those tokens, so that every trained token
weighs the same whatever the micro-batch size, gradient accumulation or world size. Each
micro-batch therefore returns a *sum*; `step_normalized_loss` scales it so that, after Lightning divides
by ``accumulate_grad_batches`` and DDP/FSDP average gradients over ranks, the gradient is exactly that of
the step's per-token mean. Averaging per-micro-batch means instead (what transformers did until 2024 and
LitGPT still does) weights a token by how many targets its micro-batch happened to have.

How the sum is computed is one `TokenLoss` object, chosen once when the model is built (`select_loss`):
`PlainLoss` (the model's logits), `ChunkedLoss` (the LM head on target positions only, a chunk at a time),
`LigerLoss` (Liger's fused linear cross-entropy), each wrapped in `SequenceParallelLoss` when a sequence is
split across ranks.

The token loss is the negative log-likelihood (``type: nll``) or DFT's (``type: dft``, Dynamic Fine-Tuning,
arXiv:2508.05629): each token's negative log-likelihood scaled by its detached probability. The chunked and plain
losses also sum, from the logits they already hold, how many targets are the argmax prediction and the entropy of
each target position's distribution (`TokenLoss.take_metrics`), normalised per token like the loss. The per-token
terms themselves are `lit_sft.model.token_losses`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

from lit_sft.batch import IGNORE_INDEX, TextBatch, target_positions
from lit_sft.errors import ConfigError
from lit_sft.model import sequence_parallel
from lit_sft.model.hf import HiddenStatePath, base_model, hidden_state_path
from lit_sft.model.token_losses import (
    TOKEN_METRICS,
    LossType,
    chunked_cross_entropy_sum,
    chunked_token_terms,
    token_loss_sum,
    token_terms,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger("lit_sft")

LossImplementation = Literal["chunked", "plain", "liger"]
#: Turns a batch into the model's inputs besides ``input_ids`` (`SFTModule.model_inputs`).
ModelInputs = Callable[[TextBatch], dict[str, Any]]

__all__ = [
    "TOKEN_METRICS",
    "ChunkedLoss",
    "LigerLoss",
    "LossOptions",
    "PlainLoss",
    "SequenceParallelLoss",
    "TokenLoss",
    "chunked_cross_entropy_sum",
    "chunked_token_terms",
    "resolve_loss_options",
    "select_loss",
    "step_normalized_loss",
    "target_positions",
    "token_loss_sum",
    "token_terms",
]


@dataclass
class LossOptions:
    """How the token losses are computed (the result is the same, up to float rounding).

    Args:
        implementation: ``chunked`` (default): logits only for target positions, ``chunk_size`` at a time,
            recomputed in the backward pass, so full-vocabulary fp32 logits are never held for the whole
            batch; ``liger``: Liger's fused linear cross-entropy (CUDA GPU); ``plain``: the model's logits for
            every position. Models whose logits are not ``lm_head(hidden states)`` fall back to ``plain``.
        chunk_size: Target positions per chunk of the chunked loss.
        type: The token loss: ``nll`` (default), the negative log-likelihood; ``dft``, Dynamic Fine-Tuning: each
            token's negative log-likelihood times its probability, detached (``-sg(p) log p``). The same
            per-step token-mean normalisation applies to both. ``dft`` works with ``chunked`` and ``plain``, not
            ``liger`` (its fused kernel returns no per-token probabilities). What other tools call
            ``loss_type: dft`` is ``model.loss: {type: dft}`` here.
        token_metrics: Also log ``train/token_accuracy``, ``train/entropy``, ``val/token_accuracy`` and
            ``val/entropy``: the share of targets that are the argmax prediction and the mean entropy (nats) of
            the predicted distribution at target positions, exact per-token means over the optimizer step /
            the validation set. Computed from each chunk's logits inside the loss, so they cost no extra
            full-vocabulary memory; not available with ``liger``.
    """

    implementation: LossImplementation = "chunked"
    chunk_size: int = 4096
    type: LossType = "nll"
    token_metrics: bool = True


def resolve_loss_options(
    loss: LossOptions | dict[str, Any] | None, implementation: str | None, chunk_size: int | None
) -> LossOptions:
    """``loss`` as `LossOptions`, or built from the old flat options (configs and checkpoints from before
    they were grouped), which still work.

    Raises:
        ConfigError: When both ``loss`` and an old flat option are set.
    """
    old: dict[str, Any] = {"implementation": implementation, "chunk_size": chunk_size}
    old = {name: value for name, value in old.items() if value is not None}
    if old:
        renames = ", ".join(f"model.loss_{name} is now model.loss.{name}" for name in old)
        if loss is not None:
            raise ConfigError(f"{renames}: set model.loss only")
        log.warning(f"lit_sft: {renames} (the old name still works)")
        return LossOptions(**old)
    if isinstance(loss, dict):
        return LossOptions(**loss)
    return loss if loss is not None else LossOptions()


def step_normalized_loss(
    loss_sum: torch.Tensor, step_target_tokens: int, accumulate_grad_batches: int, world_size: int
) -> torch.Tensor:
    """The micro-batch loss to backpropagate so that the step's gradient is that of its per-token mean.

    Lightning divides each micro-batch loss by ``accumulate_grad_batches`` and data-parallel strategies
    average gradients over ``world_size`` ranks; both are undone here, and the sum is divided by the
    step's target count instead.
    """
    return loss_sum * (accumulate_grad_batches * world_size / max(step_target_tokens, 1))


class TokenLoss:
    """The sum of a batch's token losses and the number of its targets, computed one way.

    Called with a batch (a `TextBatch` or `VisionBatch`); ``shifted`` means the batch is this rank's slice of
    a sequence split across ranks, whose ``shift_labels`` are already shifted. Losses that can also sum the
    per-token metrics (`TOKEN_METRICS`) keep those of their last call for `take_metrics`.
    """

    last_metrics: torch.Tensor | None = None

    def __call__(self, batch: TextBatch, shifted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def take_metrics(self) -> torch.Tensor | None:
        """The metric sums of the last call (``[argmax hits, entropy sum]``, detached), leaving none behind;
        None when this loss does not compute them."""
        sums, self.last_metrics = self.last_metrics, None
        return sums


class PlainLoss(TokenLoss):
    """Cross-entropy on the model's own logits for every position.

    Args:
        forward: Returns the logits of ``input_ids`` and the other inputs (`SFTModule.forward`).
        model_inputs: The batch's model inputs besides ``input_ids``.
        loss_type: ``nll`` or ``dft`` (`LossOptions.type`).
        metrics: Also sum the per-token metrics (`take_metrics`).
    """

    def __init__(
        self,
        forward: Callable[..., torch.Tensor],
        model_inputs: ModelInputs,
        loss_type: LossType = "nll",
        metrics: bool = True,
    ) -> None:
        self.forward, self.model_inputs = forward, model_inputs
        self.loss_type, self.metrics = loss_type, metrics

    def __call__(self, batch: TextBatch, shifted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        self.last_metrics = None
        logits = self.forward(batch["input_ids"], **self.model_inputs(batch))
        if "target_index" in batch and not shifted:  # positions chosen on the host: no device sync
            selected = logits.reshape(-1, logits.shape[-1]).index_select(0, batch["target_index"])
            targets = batch["target_ids"]
        else:
            labels = batch["shift_labels"] if shifted else batch["labels"]
            shifted_labels = labels if shifted else labels[:, 1:]
            mask = shifted_labels != IGNORE_INDEX
            # Only target positions are upcast to fp32 (in token_terms), not the whole (batch, seq, vocab).
            selected, targets = (logits if shifted else logits[:, :-1])[mask], shifted_labels[mask]
        loss_sum, self.last_metrics = token_terms(selected, targets, self.loss_type, self.metrics)
        return loss_sum, torch.as_tensor(targets.shape[0], device=loss_sum.device)


class _HeadOnTargets(TokenLoss):
    """The decoder's hidden states, then the LM head on target positions only (`HiddenStatePath`)."""

    def __init__(self, path: HiddenStatePath, model_inputs: ModelInputs) -> None:
        self.path, self.model_inputs = path, model_inputs

    def __call__(self, batch: TextBatch, shifted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        self.last_metrics = None
        hidden = self.path.hidden_states(batch["input_ids"], **self.model_inputs(batch))
        if "target_index" in batch and not shifted:  # positions chosen on the host: no device sync
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["target_index"])
            targets = batch["target_ids"]
        else:
            labels = batch["shift_labels"] if shifted else batch["labels"]
            hidden, targets = target_positions(hidden, labels, shifted=shifted)
        count = torch.as_tensor(targets.shape[0], device=targets.device)
        return self.head_loss_sum(hidden, targets), count

    def head_loss_sum(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ChunkedLoss(_HeadOnTargets):
    """The LM head on target positions only, ``chunk_size`` rows at a time (`chunked_token_terms`)."""

    def __init__(
        self,
        path: HiddenStatePath,
        model_inputs: ModelInputs,
        chunk_size: int,
        loss_type: LossType = "nll",
        metrics: bool = True,
    ) -> None:
        super().__init__(path, model_inputs)
        self.chunk_size, self.loss_type, self.metrics = chunk_size, loss_type, metrics

    def head_loss_sum(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss_sum, self.last_metrics = chunked_token_terms(
            hidden, targets, self.path.logits, self.chunk_size, self.loss_type, self.metrics
        )
        return loss_sum


class LigerLoss(_HeadOnTargets):
    """Liger's fused linear cross-entropy (head and loss in one kernel, CUDA) on target positions.

    Raises:
        ConfigError: Without ``liger-kernel``.
    """

    def __init__(self, path: HiddenStatePath, model_inputs: ModelInputs, softcap: float | None) -> None:
        super().__init__(path, model_inputs)
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            raise ConfigError(
                "model.loss.implementation=liger needs liger-kernel: pip install -e '.[gpu]'"
            ) from None
        self.fused = LigerFusedLinearCrossEntropyLoss(reduction="sum", softcap=softcap)

    def head_loss_sum(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        head = self.path.head
        return self.fused(head.weight, hidden, targets, getattr(head, "bias", None)).float()


class SequenceParallelLoss(TokenLoss):
    """This rank's slice of each packed sequence (`lit_sft.model.sequence_parallel`), labels shifted over
    the whole sequence first, then ``inner`` on the slice: a partial sum that the per-step normalisation adds
    up with the other ranks'."""

    def __init__(self, inner: TokenLoss, size: int, attn_implementation: str) -> None:
        self.inner, self.size, self.attn_implementation = inner, size, attn_implementation

    def __call__(self, batch: TextBatch, shifted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        group = sequence_parallel.sequence_parallel_group(self.size)
        # A TextBatch but for its attention_mask, set to None (packed: no mask), which every reader allows.
        sharded = cast(TextBatch, sequence_parallel.shard_batch(batch, group, self.attn_implementation))
        return self.inner(sharded, shifted=True)

    def take_metrics(self) -> torch.Tensor | None:
        return self.inner.take_metrics()


def select_loss(
    options: LossOptions,
    model: PreTrainedModel,
    forward: Callable[..., torch.Tensor],
    model_inputs: ModelInputs,
    sequence_parallel_size: int = 1,
    attn_implementation: str | None = None,
) -> TokenLoss:
    """The `TokenLoss` for ``options`` and this model, chosen once (the chunked and Liger losses need the
    decoder/head split, checked on a probe; without it the chunked loss falls back to the plain one).

    Raises:
        ConfigError: For ``liger`` on a model whose logits are not ``lm_head(hidden states)``, or with ``dft``.
    """
    if options.implementation == "liger" and options.type != "nll":
        raise ConfigError(
            f"model.loss.type={options.type} works with model.loss.implementation chunked or plain, not liger "
            "(Liger's fused kernel returns no per-token probabilities)"
        )
    path = None if options.implementation == "plain" else hidden_state_path(model)
    loss: TokenLoss
    if path is None:
        if options.implementation == "liger":
            raise ConfigError(
                "model.loss.implementation=liger needs a model whose logits are lm_head(hidden states)"
            )
        loss = PlainLoss(forward, model_inputs, options.type, options.token_metrics)
    elif options.implementation == "liger":
        loss = LigerLoss(
            path, model_inputs, getattr(base_model(model).config, "final_logit_softcapping", None)
        )
    else:
        loss = ChunkedLoss(path, model_inputs, options.chunk_size, options.type, options.token_metrics)
    if sequence_parallel_size > 1:
        loss = SequenceParallelLoss(loss, sequence_parallel_size, attn_implementation or "sdpa")
    return loss
