"""Per-step bookkeeping of `SFTModule`: what an optimizer step accumulates for logging, the guard against
non-finite steps, and the RNG states checkpoints carry for exact resume."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch import Trainer

from lit_sft.errors import TrainingError
from lit_sft.model.token_losses import TOKEN_METRICS

log = logging.getLogger("lit_sft")


class StepAccounting:
    """The loss and token counts of the current optimizer step, the running totals, and the non-finite guard.

    Args:
        skip_nonfinite_steps: How many non-finite steps may be skipped before the run stops.
    """

    def __init__(self, skip_nonfinite_steps: int = 0) -> None:
        self.skip_nonfinite_steps = skip_nonfinite_steps
        self.skipped_steps = 0
        self.loss: torch.Tensor | None = None
        #: This rank's share of the step's per-token metrics (`lit_sft.model.loss.TOKEN_METRICS`).
        self.metrics: torch.Tensor | None = None
        self.trained_tokens = 0
        self.tokens = 0
        self.totals = {"tokens": 0, "trained_tokens": 0}

    def add_micro_batch(
        self,
        loss_sum: torch.Tensor,
        step_trained_tokens: int,
        step_tokens: int,
        metric_sums: torch.Tensor | None = None,
    ) -> None:
        """Add a micro-batch's share of the step's per-token mean loss (its loss sum over the step's count),
        and likewise of the per-token metrics when their sums are given."""
        share = loss_sum.detach() / max(step_trained_tokens, 1)
        self.loss = share if self.loss is None else self.loss + share
        if metric_sums is not None:
            metric_share = metric_sums.detach() / max(step_trained_tokens, 1)
            self.metrics = metric_share if self.metrics is None else self.metrics + metric_share
        self.trained_tokens = step_trained_tokens
        self.tokens = step_tokens

    def take_loss(self) -> torch.Tensor | None:
        """The step's loss (this rank's share), leaving none for the next step."""
        loss, self.loss = self.loss, None
        return loss

    def take_metrics(self) -> torch.Tensor | None:
        """The step's per-token metrics (this rank's share), leaving none for the next step."""
        metrics, self.metrics = self.metrics, None
        return metrics

    def finish_step(self) -> None:
        """Add the step's tokens to the totals."""
        self.totals["trained_tokens"] += self.trained_tokens
        self.totals["tokens"] += self.tokens

    def guard_nonfinite(
        self,
        trainer: Trainer,
        step_loss: torch.Tensor | None,
        grad_norm: torch.Tensor | None,
        parameters: list[torch.nn.Parameter],
    ) -> None:
        """Skip (drop the gradients of) a step whose loss or gradient norm is not finite, within the budget
        of ``skip_nonfinite_steps``; past it, stop with an error naming the step. All ranks decide together.

        Raises:
            TrainingError: Past the budget.
        """
        values = [value for value in (step_loss, grad_norm) if value is not None]
        finite = bool(all(torch.isfinite(value).all() for value in values))
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        step = trainer.global_step + 1
        loss_text = f"{float(step_loss):.4g}" if step_loss is not None else "n/a"
        norm_text = f"{float(grad_norm):.4g}" if grad_norm is not None else "n/a"
        self.skipped_steps += 1
        if self.skipped_steps > self.skip_nonfinite_steps:
            raise TrainingError(
                f"non-finite loss or gradient at step {step} (loss {loss_text}, gradient norm {norm_text}); "
                f"{self.skipped_steps - 1} such steps were skipped before (model.skip_nonfinite_steps="
                f"{self.skip_nonfinite_steps}). Lower the learning rate, check the data, or resume from the last "
                "checkpoint"
            )
        for parameter in parameters:  # optimizers leave parameters without a gradient untouched
            parameter.grad = None
        log.warning(
            f"lit_sft: step {step} skipped: non-finite loss or gradient (loss {loss_text}, gradient norm "
            f"{norm_text}); {self.skipped_steps} of {self.skip_nonfinite_steps} allowed"
        )

    def end_step(
        self, trainer: Trainer, parameters: list[torch.nn.Parameter], lr: float
    ) -> list[tuple[str, Any, dict[str, Any]]]:
        """Guard the optimizer step about to be taken (`guard_nonfinite`), add its tokens to the totals, and
        say what to log for it: ``(name, value, further LightningModule.log options)`` for the step's loss, the
        gradient norm of ``parameters`` (before clipping), the token metrics, the learning rate ``lr``, the
        tokens seen and the skipped steps.
        """
        grad_norm = gradient_norm(parameters)
        step_loss = self.take_loss()
        self.guard_nonfinite(trainer, step_loss, grad_norm, parameters)
        logs: list[tuple[str, Any, dict[str, Any]]] = []
        if grad_norm is not None:
            logs.append(("train/grad_norm", grad_norm, {}))
        if step_loss is not None:
            # Each rank holds its micro-batches' share of the step mean; their sum is the step mean.
            logs.append(("train/loss", step_loss, {"prog_bar": True, "sync_dist": True, "reduce_fx": "sum"}))
        step_metrics = self.take_metrics()
        if step_metrics is not None:  # shares of the step's per-token means, like the loss
            for name, value in zip(TOKEN_METRICS, step_metrics, strict=True):
                logs.append((f"train/{name}", value, {"sync_dist": True, "reduce_fx": "sum"}))
        self.finish_step()
        logs.append(("train/lr", lr, {}))
        logs.append(("train/trained_tokens_seen", float(self.totals["trained_tokens"]), {}))
        logs.append(("train/tokens_seen", float(self.totals["tokens"]), {}))
        if self.skipped_steps:
            logs.append(("train/skipped_steps", float(self.skipped_steps), {}))
        return logs


def gradient_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """The total 2-norm of the parameters' gradients (gathered when sharded); None without gradients."""
    if not parameters:
        return None
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None], norm_type=2.0)
    if hasattr(norm, "full_tensor"):  # sharded gradients (FSDP2)
        norm = norm.full_tensor()
    return norm


def rng_states() -> dict[str, Any]:
    """Lightning's RNG states, with NumPy's key array as a list so that ``weights_only`` loading accepts it."""
    states = _collect_rng_states()
    if "numpy" in states:
        kind, keys, position, has_gauss, gauss = states["numpy"]
        states["numpy"] = (kind, keys.tolist(), position, has_gauss, gauss)
    return states


def all_rank_rng_states(trainer: Trainer | None) -> list[dict[str, Any]]:
    """Every rank's RNG states (ranks may differ: dropout masks, for one), gathered for rank 0 to save."""
    states = rng_states()
    if trainer is None or trainer.world_size == 1 or not torch.distributed.is_initialized():
        return [states]
    gathered: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, states)
    return gathered


def rank_rng_state(saved: list[dict[str, Any]] | dict[str, Any] | None, rank: int) -> dict[str, Any] | None:
    """This rank's states among those a checkpoint saved (a single state: every rank's)."""
    if isinstance(saved, dict):
        saved = [saved]
    if not saved:
        return None
    return saved[rank] if len(saved) > rank else saved[0]


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the RNG states `rng_states` returned."""
    if "numpy" in states:
        kind, keys, position, has_gauss, gauss = states["numpy"]
        states = {**states, "numpy": (kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss)}
    _set_rng_states(states)
