"""Learning-rate schedule: linear warmup, then cosine, linear or constant."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lit_sft.errors import ConfigError

Schedule = Literal["cosine", "linear", "constant"]


def warmup_decay_factor(
    step: int,
    *,
    schedule: Schedule,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    warmup_start_ratio: float | None = None,
) -> float:
    """The learning-rate multiplier at ``step`` (0-based optimizer steps).

    Warmup rises linearly from ``1 / (warmup_steps + 1)`` so that the first step already learns, reaching
    1 at ``warmup_steps``; with ``warmup_start_ratio`` it rises from that ratio at step 0 instead (Megatron's
    ``init_lr``). The decay then goes from 1 to ``min_lr_ratio`` at ``total_steps``.
    """
    if step < warmup_steps:
        if warmup_start_ratio is not None:
            return warmup_start_ratio + (1.0 - warmup_start_ratio) * step / warmup_steps
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    shape = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


class WarmupDecayLR(LambdaLR):
    """Linear warmup by steps or ratio, then cosine, linear or constant decay; stepped every optimizer step.

    Args:
        optimizer: The optimizer.
        schedule: ``cosine``, ``linear`` or ``constant`` after warmup.
        warmup_steps: Warmup length in optimizer steps.
        warmup_ratio: Warmup length as a fraction of ``total_steps`` (used when ``warmup_steps`` is 0): 5 %
            by default, as advised for fine-tuning a pretrained model (5-10 %). Without ``total_steps``
            (a ``constant`` schedule built by hand) only ``warmup_steps`` applies.
        min_lr_ratio: The decay ends at this fraction of the peak learning rate.
        total_steps: Total optimizer steps; `SFTModule` fills it from the Trainer.
        warmup_start_ratio: Where warmup starts, as a fraction of the peak (step 0's multiplier), rising
            linearly to 1 at ``warmup_steps``; None: from ``1 / (warmup_steps + 1)``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: Schedule = "cosine",
        warmup_steps: int = 0,
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.0,
        total_steps: int | None = None,
        warmup_start_ratio: float | None = None,
    ) -> None:
        if schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"lr schedule must be cosine, linear or constant, got {schedule!r}")
        if not 0.0 <= warmup_ratio < 1.0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ConfigError("warmup_ratio must be in [0, 1) and min_lr_ratio in [0, 1]")
        if warmup_start_ratio is not None and not 0.0 <= warmup_start_ratio <= 1.0:
            raise ConfigError(f"warmup_start_ratio must be in [0, 1], got {warmup_start_ratio}")
        if total_steps is None and schedule != "constant":
            raise ConfigError(
                f"the {schedule} schedule needs total_steps (set trainer.max_steps or max_epochs)"
            )
        total = int(total_steps or 0)
        self.warmup_steps = warmup_steps or int(warmup_ratio * total)
        self.total_steps = total
        factor: dict[str, Any] = {
            "schedule": schedule,
            "warmup_steps": self.warmup_steps,
            "total_steps": total,
            "min_lr_ratio": min_lr_ratio,
            "warmup_start_ratio": warmup_start_ratio,
        }
        super().__init__(optimizer, lambda step: warmup_decay_factor(step, **factor))


def takes_unset_argument(factory: Any, name: str) -> bool:
    """Whether ``factory`` (a class, function or partial, as jsonargparse builds) takes ``name`` and it is unset."""
    if isinstance(factory, functools.partial) and name in factory.keywords:
        return factory.keywords[name] is None
    try:
        parameter = inspect.signature(factory).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is None


class SFTAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` with defaults for fine-tuning a pretrained model: the default optimizer of
    `SFTModule`.

    torch's own default learning rate (1e-3) is a pretraining rate: on SmolLM2-135M-Instruct it takes
    the GSM8K loss from 1.29 to 3.10 in three steps. 2e-5 is TRL's SFT default, inside the 1e-5 to 5e-5
    usually advised for small models; no weight decay, as TRL and transformers' Trainer.

    Args:
        params: The trainable parameters.
        lr: Learning rate (the peak, reached after the scheduler's warmup).
        betas: Adam's moment coefficients.
        eps: Adam's epsilon.
        weight_decay: Decoupled weight decay.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 2e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
