"""torchmetrics metrics of lit_sft."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from lit_sft.data.gsm8k import score


class GSM8KAccuracy(Metric):
    """GSM8K accuracy with strict (``#### N``) and flexible (last number) extraction, synced across ranks.

    ``update`` takes generations and their references (GSM8K solutions, bare numbers, or numbers);
    ``compute`` returns ``{"strict", "flexible", "strict_invalid"}`` as
    fractions of all items (``strict_invalid``: generations with no ``#### <number>``).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("strict", "flexible", "strict_invalid", "total"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, generations: Sequence[str], references: Sequence[Any]) -> None:  # type: ignore[override]
        scores = [score(text, reference) for text, reference in zip(generations, references, strict=True)]
        self.strict += sum(item.strict_correct for item in scores)
        self.flexible += sum(item.flexible_correct for item in scores)
        self.strict_invalid += sum(item.strict_answer is None for item in scores)
        self.total += len(scores)

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.total.clamp(min=1).double()
        return {
            "strict": self.strict.double() / total,
            "flexible": self.flexible.double() / total,
            "strict_invalid": self.strict_invalid.double() / total,
        }
