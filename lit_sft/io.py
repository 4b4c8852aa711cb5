"""Writing files so that a reader (another rank, a resumed run, a crash) never sees half of one.

Every file lit_sft writes for others to read (checkpoints, generated data, prepared datasets, exports) goes
through `atomic_write`: the bytes go to a temporary file beside the target, are flushed and fsynced, and
the temporary file is renamed over the target; the directory entry is fsynced too, so that the rename
itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from lit_sft.errors import ConfigError


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush ``directory``'s entries (renames into it) to disk, on POSIX systems."""
    if hasattr(os, "O_DIRECTORY"):
        descriptor = os.open(directory, os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` keeps its previous content. Parent
    directories are created. ``mode`` is ``"w"`` (text, UTF-8 unless ``encoding`` is given) or ``"wb"``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        with open(temporary, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    fsync_directory(directory)


def write_rows(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write rows as parquet or jsonl (by the file ending: ``.parquet``, ``.jsonl``, ``.json``), atomically.

    Raises:
        ConfigError: For any other ending.
    """
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(list(rows))
        with atomic_write(path, "wb") as handle:
            pq.write_table(table, handle)
    elif path.endswith((".jsonl", ".json")):
        with atomic_write(path) as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise ConfigError(f"{path}: write .parquet or .jsonl")
