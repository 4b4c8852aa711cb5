"""GSM8K answer extraction and scoring.

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
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

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
