"""GSM8K answer extraction and scoring, and the torchmetrics metric over it (`GSM8KAccuracy`).

The official format ends a solution with ``#### <number>`` (OpenAI's grade-school-math release; commas in
numbers are removed before comparing). Two extractions, as in lm-evaluation-harness and verl:

* **strict**: the number after the *last* ``####`` (a ``$`` sign and spaces may stand between); a
  generation without one is invalid. This also checks that the model learned the output format.
* **flexible**: the last number anywhere in the text.

Numbers are compared numerically (``18.0`` equals ``18``; ``1,234`` equals ``1234``); nothing found
means invalid, never an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import torch
from torchmetrics import Metric

#: A number: optional minus, digits with optional thousands separators, optional decimals.
NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER = re.compile(NUMBER)
_STRICT = re.compile(r"####\s*\$?\s*(" + NUMBER + r")")


def _to_decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None


def _clean(text: str) -> str:
    return text.replace(",", "")


def extract_strict(text: str) -> str | None:
    """The number after the last ``####`` (commas removed), or None."""
    matches = _STRICT.findall(text)
    return _clean(matches[-1]) if matches else None


def extract_flexible(text: str) -> str | None:
    """The last number in the text (commas removed), or None."""
    matches = _NUMBER.findall(text.replace("$", ""))
    return _clean(matches[-1]) if matches else None


def parse_gold(gold: Any) -> Decimal | None:
    """The reference answer as a number: from a GSM8K solution (``... #### 72``), a bare number string
    (verl's ``reward_model.ground_truth``), or a number."""
    if isinstance(gold, int | float) and not isinstance(gold, bool):
        return Decimal(str(gold))
    if not isinstance(gold, str):
        return None
    if "####" in gold:
        return _to_decimal(extract_strict(gold))
    return _to_decimal(gold) if _to_decimal(gold) is not None else _to_decimal(extract_flexible(gold))


@dataclass(frozen=True)
class GSM8KScore:
    """How one generation scores against its reference.

    Attributes:
        strict_answer: The strict extraction (None: invalid).
        flexible_answer: The flexible extraction (None: invalid).
        strict_correct: The strict answer equals the reference.
        flexible_correct: The flexible answer equals the reference.
    """

    strict_answer: str | None
    flexible_answer: str | None
    strict_correct: bool
    flexible_correct: bool


def score(generation: str, gold: Any) -> GSM8KScore:
    """Score a generation against a reference answer (see `parse_gold` for the forms it takes)."""
    reference = parse_gold(gold)
    strict, flexible = extract_strict(generation), extract_flexible(generation)
    return GSM8KScore(
        strict_answer=strict,
        flexible_answer=flexible,
        strict_correct=reference is not None and _to_decimal(strict) == reference,
        flexible_correct=reference is not None and _to_decimal(flexible) == reference,
    )


class GSM8KAccuracy(Metric):
    """GSM8K accuracy with strict (``#### N``) and flexible (last number) extraction, synced across ranks.

    ``update`` takes generations and their references (GSM8K solutions, bare numbers, or numbers);
    ``compute`` returns ``{"strict", "flexible", "strict_invalid"}`` as
    fractions of all items (``strict_invalid``: generations with no ``#### <number>``).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    # The states `add_state` registers (declared for the type checker, which cannot see them).
    strict: torch.Tensor
    flexible: torch.Tensor
    strict_invalid: torch.Tensor
    total: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("strict", "flexible", "strict_invalid", "total"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, generations: Sequence[str], references: Sequence[Any]) -> None:
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
