"""How many processes this one may start: the cores it may run on, shared among the node's ranks."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may use (its CPU affinity), divided among the ranks of its node
    (``LOCAL_WORLD_SIZE``, set by torchrun and Lightning's launchers): each rank prepares its own data."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(local_ranks, 1))
