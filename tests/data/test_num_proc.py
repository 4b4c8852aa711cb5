"""Tokenization on every core by default (issue 21): how many processes, and the same rows either way."""

from __future__ import annotations

import datasets
import pytest

from lit_sft.data import SFTDataModule, processes, splits
from lit_sft.data.splits import default_num_proc
from tests.helpers import write_jsonl


@pytest.fixture
def cores(monkeypatch):
    def set_cores(count: int) -> None:
        monkeypatch.setattr(processes.os, "sched_getaffinity", lambda pid: set(range(count)), raising=False)

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return set_cores


@pytest.mark.parametrize(
    ("count", "rows", "local_ranks", "expected"),
    [
        (8, 5_000, 1, 1),  # too few rows for processes to pay
        (8, 1_000_000, 1, 8),  # every core
        (8, 1_000_000, 4, 2),  # four ranks on the node share them
        (64, 1_000_000, 1, 16),  # capped
        (8, 30_000, 1, 3),  # no process gets fewer than 10,000 rows
        (1, 1_000_000, 8, 1),
    ],
)
def test_default_processes(cores, monkeypatch, count, rows, local_ranks, expected) -> None:
    cores(count)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_ranks))
    assert default_num_proc(rows) == expected


def test_unset_num_proc_tokenizes_on_every_core_with_the_same_rows(tmp_path, cores, monkeypatch) -> None:
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{2 * i}"} for i in range(40)]
    path = write_jsonl(str(tmp_path / "rows.jsonl"), rows)
    used = []
    original_map = datasets.Dataset.map

    def spy(self, *args, **kwargs):
        used.append(kwargs.get("num_proc"))
        return original_map(self, *args, **kwargs)

    def tokenized(num_proc: int | None, cache: str) -> list[list[int]]:
        dm = SFTDataModule(train_files=path, tokenizer_name_or_path="builtin:byte-chatml", prompt_key="question",
                           response_key="answer", num_proc=num_proc, cache_dir=str(tmp_path / cache))  # fmt: skip
        dm.setup("fit")
        return [row["labels"] for row in dm.train_dataset]

    reference = tokenized(1, "one")
    cores(2)
    monkeypatch.setattr(splits, "PARALLEL_ROWS", 10)
    monkeypatch.setattr(datasets.Dataset, "map", spy)
    assert tokenized(None, "auto") == reference
    assert used == [2]
