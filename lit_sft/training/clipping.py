"""Gradient clipping in the two cases the recipes meet and Lightning refuses: a fused optimizer under
``bf16-mixed``, and clipping by norm under FSDP.

Lightning's `MixedPrecision.clip_gradients` refuses every optimizer that unscales inside its own step (fused
AdamW sets ``_step_supports_amp_scaling``): under ``16-mixed`` the gradients such an optimizer receives are
still multiplied by the GradScaler's scale, so a norm measured before the step would be wrong. ``bf16-mixed``
has no GradScaler: the gradients are the true ones, and clipping them before the fused step is exactly what
clipping means. Lightning's `FSDPPrecision` refuses clipping by norm because it has no reference to the root
FSDP module, whose ``clip_grad_norm_`` computes the norm over every rank's shards; the strategy holds that
module. `clip_gradients` clips these and leaves every other case to Lightning, the refusal of a fused
optimizer under a GradScaler (``16-mixed``) included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from lightning.fabric.plugins.precision.amp import _optimizer_handles_unscaling
from lightning.pytorch.plugins.precision import FSDPPrecision, MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch.distributed.fsdp import FullyShardedDataParallel

from lit_sft.errors import ConfigError

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule


def clips_like_full_precision(plugin: Precision, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` under ``plugin`` is an unscaling (fused) optimizer in scaler-free mixed precision,
    the case Lightning refuses although the gradients are the true ones."""
    return (
        isinstance(plugin, MixedPrecision)
        and plugin.scaler is None
        and _optimizer_handles_unscaling(optimizer)
    )


def clip_gradients(
    module: LightningModule,
    optimizer: torch.optim.Optimizer,
    gradient_clip_val: float | None,
    gradient_clip_algorithm: str | None,
) -> None:
    """Clip the gradients of ``optimizer``'s parameters as ``Trainer(gradient_clip_val=...)`` asks.

    Args:
        module: The LightningModule being trained (its trainer's precision plugin clips).
        optimizer: The optimizer about to step.
        gradient_clip_val: The clipping threshold; None or 0 clips nothing.
        gradient_clip_algorithm: ``norm`` (the default when None) or ``value``.
    """
    plugin = module.trainer.precision_plugin
    by_norm = GradClipAlgorithmType((gradient_clip_algorithm or "norm").lower()) == GradClipAlgorithmType.NORM
    if isinstance(plugin, FSDPPrecision) and by_norm and gradient_clip_val:
        if plugin.scaler is not None and _optimizer_handles_unscaling(optimizer):
            module.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)  # Lightning refuses
            return
        root = module.trainer.strategy.model
        if not isinstance(root, FullyShardedDataParallel):
            raise ConfigError(
                "trainer.gradient_clip_val: clipping by norm under FSDP needs the root FullyShardedDataParallel "
                f"module, and the strategy holds a {type(root).__name__}; set gradient_clip_algorithm: value"
            )
        root.clip_grad_norm_(gradient_clip_val)
        return
    if not clips_like_full_precision(plugin, optimizer):
        module.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        return
    if not gradient_clip_val or gradient_clip_val <= 0:
        return
    # The same calls Lightning's base Precision.clip_gradients makes (MixedPrecision does not override them).
    if by_norm:
        plugin.clip_grad_by_norm(optimizer, gradient_clip_val)
    else:
        plugin.clip_grad_by_value(optimizer, gradient_clip_val)
