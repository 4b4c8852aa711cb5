"""Grouping rows into micro-batches: fixed-size, token-budget (length-grouped), and packed.

All three are pure functions of the row lengths. The token-budget and packed groupings do not depend on
the epoch (ties are broken by row index), so the number of micro-batches is the same every epoch; the
sampler shuffles the order of the groups instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fixed_size_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive chunks of ``batch_size`` rows of ``order`` (the last one may be smaller)."""
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class _FirstFit:
    """A segment tree over remaining capacities 0..budget: the smallest capacity >= s that has an open bin.

    Each query and update is O(log budget), so packing n rows is O(n log budget) whatever the number of
    open bins (a sorted list of bins would be O(n * bins)).
    """

    def __init__(self, budget: int) -> None:
        self.size = 1
        while self.size < budget + 1:
            self.size *= 2
        self.count = [0] * (2 * self.size)

    def add(self, capacity: int, delta: int) -> None:
        node = capacity + self.size
        while node:
            self.count[node] += delta
            node //= 2

    def smallest_at_least(self, needed: int) -> int | None:
        """The smallest capacity >= needed with at least one bin, or None."""
        if needed >= self.size:
            return None
        # Walk up from the leaf, then down the leftmost non-empty subtree to the right of it.
        node = needed + self.size
        if self.count[node]:
            return needed
        while node > 1:
            if node % 2 == 0 and self.count[node + 1]:
                node += 1
                while node < self.size:
                    node = 2 * node if self.count[2 * node] else 2 * node + 1
                return node - self.size
            node //= 2
        return None


def pack_best_fit_decreasing(lengths: Sequence[int] | np.ndarray, budget: int) -> list[np.ndarray]:
    """Pack rows into bins of at most ``budget`` tokens, best-fit-decreasing.

    Rows are placed longest first (ties by index), each into the open bin it fills most tightly, or a new
    bin. Returns each bin's row indices, in the order the bins were opened.

    Raises:
        ValueError: When a row is longer than ``budget``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and int(lengths.max()) > budget:
        raise ValueError(f"a row has {int(lengths.max())} tokens, more than the packing budget of {budget}")
    order = np.lexsort((np.arange(len(lengths)), -lengths))
    tree = _FirstFit(budget)
    bins: list[list[int]] = []
    bins_by_capacity: dict[int, list[int]] = {}
    for row in order.tolist():
        length = int(lengths[row])
        capacity = tree.smallest_at_least(length)
        if capacity is None:
            bins.append([row])
            bin_index, remaining = len(bins) - 1, budget - length
        else:
            bin_index = bins_by_capacity[capacity].pop()
            tree.add(capacity, -1)
            bins[bin_index].append(row)
            remaining = capacity - length
        bins_by_capacity.setdefault(remaining, []).append(bin_index)
        tree.add(remaining, 1)
    return [np.asarray(rows, dtype=np.int64) for rows in bins]


def token_budget_batches(lengths: Sequence[int] | np.ndarray, budget: int) -> list[np.ndarray]:
    """Length-grouped padded batches: rows sorted by length, cut so that rows x longest <= ``budget``.

    Similar lengths share a batch, so little is padded; short rows make large batches and long rows small
    ones, keeping the padded token count of each batch under the budget.

    Raises:
        ValueError: When a row is longer than ``budget``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and int(lengths.max()) > budget:
        raise ValueError(
            f"a row has {int(lengths.max())} tokens, more than the batch token budget of {budget}"
        )
    order = np.lexsort((np.arange(len(lengths)), lengths))
    batches: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        # Rows are ascending, so the batch's longest row is its last one.
        if end < len(order) and (end + 1 - start) * int(lengths[order[end]]) <= budget:
            continue
        batches.append(order[start:end])
        start = end
    return batches


def padding_fraction(lengths: np.ndarray, batches: Sequence[np.ndarray], budget: int | None = None) -> float:
    """Fraction of the tokens a set of micro-batches computes on that are padding.

    Args:
        lengths: Token count of every row.
        batches: Row indices of each micro-batch.
        budget: None: every row of a batch is padded to the batch's longest row. A token count: every batch
            is one sequence of exactly ``budget`` tokens (rows packed into fixed-size sequences), so the
            padding is what the rows leave unfilled.
    """
    real = int(sum(int(lengths[batch].sum()) for batch in batches))
    if budget is not None:
        computed = len(batches) * budget
    else:
        computed = int(sum(len(batch) * int(lengths[batch].max()) for batch in batches if len(batch)))
    return 1.0 - real / max(computed, 1)
