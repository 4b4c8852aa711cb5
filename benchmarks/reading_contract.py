"""A longer run of the bad-input property test (tests/data/test_reading_contract.py): many more random
rows, mutations and framings than CI's seeded 30, each read in both modes and checked against the contract.

    PYTHONPATH=. python benchmarks/reading_contract.py --examples 2000 [--seed 1]

Prints the number of inputs checked and the first counterexample (hypothesis shrinks it) if any.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import datasets
from hypothesis import HealthCheck, given, seed, settings

from tests.data.test_reading_contract import cases, check_contract


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=500, help="random inputs to check")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    checked = 0

    @seed(args.seed)
    @settings(
        max_examples=args.examples, database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )
    @given(cases())
    def run(case) -> None:
        nonlocal checked
        checked += 1
        check_contract(case)

    started = time.perf_counter()
    run()
    print(
        f"{checked} inputs checked against the contract in {time.perf_counter() - started:.0f} s, none mishandled"
    )


if __name__ == "__main__":
    main()
