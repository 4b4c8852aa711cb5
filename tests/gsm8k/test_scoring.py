from __future__ import annotations

import json
import os
from decimal import Decimal

import pytest

from lit_sft.gsm8k.scoring import extract_flexible, extract_strict, parse_gold, score


def read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_reference_solution_is_read_as_its_official_answer(gsm8k_dir: str, split: str) -> None:
    rows = read(os.path.join(gsm8k_dir, f"{split}.jsonl"))
    assert len(rows) == {"train": 7473, "test": 1319}[split]
    for row in rows:
        # The official answer is the text after '####', commas removed.
        expected = Decimal(row["answer"].split("####")[-1].strip().replace(",", ""))
        assert parse_gold(row["answer"]) == expected, row["answer"]
        result = score(row["answer"], str(expected))
        assert Decimal(result.strict_answer) == Decimal(result.flexible_answer) == expected, row["answer"]
        assert result.strict_correct and result.flexible_correct, row["answer"]
        off_by_one = score(row["answer"], str(expected + 1))
        assert not off_by_one.strict_correct and not off_by_one.flexible_correct, row["answer"]


def test_flexible_scoring_agrees_with_openais_labels_on_example_model_solutions(gsm8k_dir: str) -> None:
    """The released 6B/175B solutions end with 'A: <number>' and carry an is_correct label."""
    agree = total = 0
    for row in read(os.path.join(gsm8k_dir, "example_model_solutions.jsonl")):
        gold = row["ground_truth"].split("A:")[-1]
        for solution in (value for value in row.values() if isinstance(value, dict)):
            result = score(solution["solution"], gold)
            assert result.strict_answer is None  # no '####' in that format: strict is invalid
            agree += result.flexible_correct == solution["is_correct"]
            total += 1
    assert total == 4 * 1319
    assert agree == total


@pytest.mark.parametrize(
    ("generation", "gold", "strict", "flexible", "strict_correct", "flexible_correct"),
    [
        ("So 3+4 = 7.\n#### 7", "7", "7", "7", True, True),
        ("#### -5", "-5", "-5", "-5", True, True),
        ("The change is #### -12.50", "-12.5", "-12.50", "-12.50", True, True),
        ("#### 18.0", "18", "18.0", "18.0", True, True),
        ("#### 1,234", "#### 1234", "1234", "1234", True, True),
        ("She pays $1,234.5 in total.\n#### $1,234.50", "1234.5", "1234.50", "1234.50", True, True),
        ("####5", "5", "5", "5", True, True),
        ("#### 3\nWait, that is wrong.\n#### 4", "4", "4", "4", True, True),
        ("#### 4\nCheck: 2*2 = 4, so I am sure.", "4", "4", "4", True, True),
        ("#### 12 apples, since 5 + 7 = 12", "12", "12", "12", True, True),
        ("The answer is 7.", "7", None, "7", False, True),
        ("#### seven", "7", None, None, False, False),
        ("I do not know.", "7", None, None, False, False),
        ("", "7", None, None, False, False),
        ("#### 1,2,3", "123", "1", "3", False, False),
        ("5 + 7 = 12\n#### 12", "13", "12", "12", False, False),
        ("#### 0.5", 0.5, "0.5", "0.5", True, True),
        ("#### 72", 72, "72", "72", True, True),
    ],
)
def test_tricky_cases(generation, gold, strict, flexible, strict_correct, flexible_correct) -> None:
    result = score(generation, gold)
    assert (result.strict_answer, result.flexible_answer) == (strict, flexible)
    assert (result.strict_correct, result.flexible_correct) == (strict_correct, flexible_correct)


def test_extractors_and_gold_forms() -> None:
    assert extract_strict("no marker here 5") is None
    assert extract_flexible("a 1, b 22, c 333") == "333"
    assert parse_gold("#### 1,000") == Decimal(1000)
    assert parse_gold(" 42 ") == Decimal(42)
    assert parse_gold("the answer is 9") == Decimal(9)
    assert parse_gold(None) is None and parse_gold(True) is None
    assert score("#### 5", None).strict_correct is False
