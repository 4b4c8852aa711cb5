from __future__ import annotations

import numpy as np
import pytest

from lit_sft.data.collate import PackedCollator, PaddingCollator
from lit_sft.data.grouping import (
    fixed_size_batches,
    pack_best_fit_decreasing,
    padding_fraction,
    token_budget_batches,
)


def best_fit_decreasing_by_hand(lengths: list[int], budget: int) -> list[int]:
    """The textbook algorithm over a plain list of bins: the sorted remaining capacities."""
    remaining: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [b for b, capacity in enumerate(remaining) if capacity >= lengths[row]]
        if fits:
            best = min(fits, key=lambda b: remaining[b])
            remaining[best] -= lengths[row]
        else:
            remaining.append(budget - lengths[row])
    return sorted(remaining)


@pytest.mark.parametrize("seed", range(20))
def test_best_fit_decreasing_matches_the_textbook_algorithm(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=rng.integers(1, 80))
    budget = int(rng.integers(60, 150))
    bins = pack_best_fit_decreasing(lengths, budget)
    assert sorted(np.concatenate(bins).tolist()) == list(range(len(lengths)))
    assert all(lengths[b].sum() <= budget for b in bins)
    assert sorted(int(budget - lengths[b].sum()) for b in bins) == best_fit_decreasing_by_hand(
        lengths.tolist(), budget
    )


def test_packing_fills_bins_and_is_deterministic() -> None:
    lengths = np.random.default_rng(0).integers(50, 900, size=5000)
    bins = pack_best_fit_decreasing(lengths, 2048)
    assert lengths.sum() / (len(bins) * 2048) > 0.99
    again = pack_best_fit_decreasing(lengths, 2048)
    assert all(np.array_equal(a, b) for a, b in zip(bins, again, strict=True))


def test_rows_longer_than_the_budget_are_refused() -> None:
    with pytest.raises(ValueError, match="201 tokens, more than the packing budget of 200"):
        pack_best_fit_decreasing([10, 201], 200)
    with pytest.raises(ValueError, match="more than the batch token budget"):
        token_budget_batches([10, 201], 200)


def test_token_budget_batches_group_similar_lengths_under_the_budget() -> None:
    lengths = np.random.default_rng(1).integers(5, 300, size=1000)
    batches = token_budget_batches(lengths, 1024)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) * lengths[b].max() <= 1024 for b in batches)
    shuffled = fixed_size_batches(np.random.default_rng(2).permutation(1000), 8)
    assert padding_fraction(lengths, batches) < 0.05 < padding_fraction(lengths, shuffled)
    # Padded batches: each row padded to its batch's longest (counted independently here).
    computed = sum(len(b) * int(lengths[b].max()) for b in shuffled)
    assert padding_fraction(lengths, shuffled) == pytest.approx(1 - lengths.sum() / computed)
    # Packed into fixed 1024-token sequences: the padding is what the rows leave unfilled.
    packs = pack_best_fit_decreasing(lengths, 1024)
    assert padding_fraction(lengths, packs, budget=1024) == pytest.approx(
        1 - lengths.sum() / (len(packs) * 1024)
    )
    assert 0 < padding_fraction(lengths, packs, budget=1024) < padding_fraction(lengths, shuffled)


def padding_of_collated_batches(
    lengths: np.ndarray, batches: list[np.ndarray], collator: PaddingCollator | PackedCollator
) -> float:
    """The padding a collator really adds: positions of its tensors that hold no token of a row."""
    computed = real = 0
    for batch in batches:
        rows = [[1] * int(lengths[row]) for row in batch]
        input_ids = collator(rows, rows)["input_ids"]
        computed += input_ids.numel()
        real += sum(len(row) for row in rows)
    return 1 - real / computed


@pytest.mark.parametrize("seed", range(3))
def test_padding_fraction_counts_the_padding_the_collators_add(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, size=200)
    padded = {
        "fixed-size": fixed_size_batches(rng.permutation(200), 8),
        "token-budget": token_budget_batches(lengths, 1024),
    }
    for name, batches in padded.items():
        expected = padding_of_collated_batches(lengths, batches, PaddingCollator(pad_token_id=0))
        assert expected > 0, name  # the case has padding to count
        assert padding_fraction(lengths, batches) == pytest.approx(expected, rel=1e-12), name


def test_fixed_size_batches() -> None:
    assert [b.tolist() for b in fixed_size_batches(np.arange(7), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
