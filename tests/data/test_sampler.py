from __future__ import annotations

import numpy as np
import pytest

from lit_sft.data.sampler import MicroBatchSampler

LENGTHS = np.arange(10, 33)  # 23 rows of different lengths
TRAINED = LENGTHS // 2


def sampler(
    rank: int = 0, world: int = 1, accumulate: int = 1, batch_size: int = 3, **kwargs
) -> MicroBatchSampler:
    return MicroBatchSampler(
        LENGTHS,
        TRAINED,
        batch_size,
        num_replicas=world,
        rank=rank,
        accumulate_grad_batches=accumulate,
        **kwargs,
    )


def test_same_seed_same_order_and_a_new_order_each_epoch() -> None:
    first, second = list(sampler(seed=1)), list(sampler(seed=1))
    assert first == second
    other_epoch = sampler(seed=1)
    other_epoch.set_epoch(1)
    assert [m.indices for m in other_epoch] != [m.indices for m in first]
    assert next(iter(sampler(shuffle=False))).indices == (0, 1, 2)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_cover_every_row_once_with_equal_counts(world: int) -> None:
    per_rank = [list(sampler(rank=rank, world=world, accumulate=2)) for rank in range(world)]
    assert len({len(batches) for batches in per_rank}) == 1
    assert all(len(batches) == len(sampler(world=world)) for batches in per_rank)
    rows = [i for batches in per_rank for m in batches if m.weight for i in m.indices]
    assert sorted(rows) == list(range(len(LENGTHS)))
    # Padding micro-batches (weight 0) only fill up the last round.
    padding = [m for batches in per_rank for m in batches if not m.weight]
    assert len(padding) == world * len(per_rank[0]) - (-(-len(LENGTHS) // 3))


@pytest.mark.parametrize(("world", "accumulate"), [(1, 1), (1, 4), (2, 3), (3, 2)])
def test_every_micro_batch_carries_its_whole_steps_token_counts(world: int, accumulate: int) -> None:
    per_rank = [list(sampler(rank=rank, world=world, accumulate=accumulate, seed=5)) for rank in range(world)]
    steps = -(-len(per_rank[0]) // accumulate)
    total = 0
    for step in range(steps):
        members = [m for batches in per_rank for m in batches[step * accumulate : (step + 1) * accumulate]]
        trained = sum(int(TRAINED[list(m.indices)].sum()) for m in members if m.weight)
        tokens = sum(int(LENGTHS[list(m.indices)].sum()) for m in members if m.weight)
        assert {m.step_trained_tokens for m in members} == {trained}
        assert {m.step_tokens for m in members} == {tokens}
        total += trained
    assert total == TRAINED.sum()


def test_state_dict_resumes_at_the_next_micro_batch() -> None:
    full = list(sampler(seed=2))
    resumed = sampler(seed=2)
    resumed.load_state_dict({"epoch": 0, "start": 3, "seed": 2})
    assert list(resumed) == full[3:]
    assert list(resumed) == full  # the skip applies to the interrupted epoch only
    assert resumed.state_dict() == {"epoch": 0, "start": 0, "seed": 2}


def test_empty_and_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        MicroBatchSampler(np.array([]), np.array([]), 2)
    with pytest.raises(ValueError, match="batch_size"):
        MicroBatchSampler(LENGTHS, TRAINED, 0)


MODES = {
    "rows": {"batch_size": 3},
    "token_budget": {"max_tokens_per_batch": 70},
    "packed": {"max_tokens_per_batch": 70, "packing": True},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("world", "accumulate"), [(1, 1), (2, 2), (3, 1)])
def test_every_batching_mode_covers_rows_once_with_equal_rank_counts_and_step_totals(
    mode, world, accumulate
) -> None:
    def make(rank):
        return MicroBatchSampler(
            LENGTHS,
            TRAINED,
            num_replicas=world,
            rank=rank,
            accumulate_grad_batches=accumulate,
            seed=4,
            **MODES[mode],
        )

    per_rank = [list(make(rank)) for rank in range(world)]
    assert {len(batches) for batches in per_rank} == {len(make(0))}  # equal on every rank, and len() says so
    rows = [i for batches in per_rank for m in batches if m.weight for i in m.indices]
    assert sorted(rows) == list(range(len(LENGTHS)))
    for step in range(-(-len(per_rank[0]) // accumulate)):
        members = [m for batches in per_rank for m in batches[step * accumulate : (step + 1) * accumulate]]
        assert {m.step_trained_tokens for m in members} == {
            sum(int(TRAINED[list(m.indices)].sum()) for m in members if m.weight)
        }
    for m in (m for batches in per_rank for m in batches):
        lengths = LENGTHS[list(m.indices)]
        if mode == "packed":
            assert lengths.sum() <= 70  # one packed sequence within the budget
        elif mode == "token_budget":
            assert len(lengths) * lengths.max() <= 70  # padded size within the budget


@pytest.mark.parametrize("mode", ["token_budget", "packed"])
def test_budget_modes_keep_their_groups_and_shuffle_their_order_each_epoch(mode: str) -> None:
    sampler = MicroBatchSampler(LENGTHS, TRAINED, seed=1, **MODES[mode])
    first = [m.indices for m in sampler]
    sampler.set_epoch(1)
    second = [m.indices for m in sampler]
    assert len(first) == len(second) == len(sampler)
    assert sorted(first) == sorted(second) and first != second


def test_rows_chosen_per_epoch_keep_the_first_epochs_micro_batch_count() -> None:
    lengths, trained = np.full(12, 10), np.full(12, 4)
    chosen = {0: [0, 1, 2, 3, 4, 5], 1: list(range(12)), 2: [7, 7]}  # 3, 6 and 1 packs of 20 tokens
    packed = MicroBatchSampler(
        lengths,
        trained,
        max_tokens_per_batch=20,
        packing=True,
        epoch_rows=lambda epoch: np.array(chosen[epoch]),
    )
    assert len(packed) == 3
    more = packed.plan(1)  # six packs' worth of rows: the last three packs are left out
    assert len(more) == 3 and all(m.weight for m in more)
    assert {m.step_trained_tokens for m in more} == {8}
    fewer = packed.plan(2)  # one pack (row 7 twice) and two weight-0 fillers
    assert [m.weight for m in fewer] == [1, 0, 0] and fewer[0].indices == (7, 7)
    assert fewer[0].step_trained_tokens == 8
