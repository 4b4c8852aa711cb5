"""Reading data files and Hub datasets, one source at a time.

Each file is loaded on its own, a dataset directory file by file, so that every row keeps its provenance
(file, row) for error messages, and so that each file's Arrow conversion and tokenization are cached
separately. Typed files (parquet, arrow) and Hub datasets go through ``datasets.load_dataset``; text files
(jsonl, json, csv) through `lit_sft.data.readers`, which keeps every value as written and every row number
exact.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from lit_sft.data.readers import read_rows
from lit_sft.errors import DataFileError

#: File endings and what reads them: a ``datasets`` builder for typed files, `read_rows` for text files.
BUILDERS = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".json": "json",
    ".jsonl.gz": "jsonl",
    ".json.gz": "json",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".arrow": "arrow",
}
#: The file kinds `read_rows` reads (the others have a schema of their own).
TEXT_KINDS = ("jsonl", "json", "csv")


@dataclass
class Source:
    """One loaded data source.

    Attributes:
        name: The file path or Hub id, as error messages name it.
        dataset: Its rows.
        typed: Whether the rows come from an Arrow schema (parquet, arrow, Hub datasets), where every row of
            a struct column has every key of every row, missing ones as null; text files keep what was
            written.
    """

    name: str
    dataset: datasets.Dataset
    typed: bool = True


def _builder_for(path: str) -> str | None:
    lower = path.lower()
    for ending, builder in BUILDERS.items():
        if lower.endswith(ending):
            return builder
    return None


def is_local_path(spec: str) -> bool:
    """Whether ``spec`` names a local file (or directory) rather than a Hub dataset id: it starts with ``.``,
    ``/`` or ``~``, or ends in a data file ending (`BUILDERS`). Hub ids may contain dots
    (``teknium/OpenHermes-2.5``), so a dot alone does not make a path."""
    return spec.startswith((".", "/", "~")) or _builder_for(os.path.expanduser(spec)) is not None


def expand_specs(specs: str | Sequence[str] | None) -> list[str]:
    """Expand globs in local paths; keep Hub ids and plain paths as they are, in order."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    expanded: list[str] = []
    for spec in specs:
        if glob.has_magic(spec):
            matches = sorted(glob.glob(os.path.expanduser(spec)))
            if not matches:
                raise DataFileError(f"no file matches {spec!r}")
            expanded.extend(matches)
        else:
            expanded.append(spec)
    return expanded


def _split_files(path: str, spec: str, split: str) -> list[str]:
    """The data files of ``split`` in a dataset directory, found by ``datasets``' own split conventions."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        splits = DataFilesDict.from_patterns(get_data_patterns(path), base_path=path)
    except Exception as error:  # datasets raises EmptyDatasetError, FileNotFoundError...
        raise DataFileError(f"{spec}: no data files found in the directory ({error})") from None
    if split not in splits:
        raise DataFileError(
            f"{spec}: the directory has no {split!r} split; it has {sorted(map(str, splits))}"
        )
    return sorted(splits[split])


def _has_configs(path: str) -> bool:
    """Whether a dataset directory's README declares its own configs (then ``datasets`` reads it whole)."""
    readme = os.path.join(path, "README.md")
    if not os.path.isfile(readme):
        return False
    with open(readme, encoding="utf-8", errors="replace") as handle:
        return "\nconfigs:" in "\n" + handle.read(65536)


def load_sources(
    spec: str, *, config_name: str | None = None, cache_dir: str | None = None, default_split: str = "train"
) -> list[Source]:
    """Load one file, Hub dataset, or dataset directory, the last as one source per file.

    Takes the arguments of `load_source`. A directory's files are named ``directory/relative/path`` in
    error messages, with rows counted within each file.
    """
    path = os.path.expanduser(spec)
    if not os.path.isdir(path) or _has_configs(path):
        return [load_source(spec, config_name=config_name, cache_dir=cache_dir, default_split=default_split)]
    files = _split_files(path, spec, default_split)
    if any(_builder_for(file) is None for file in files):  # e.g. a loading script's data: datasets decides
        return [load_source(spec, config_name=config_name, cache_dir=cache_dir, default_split=default_split)]
    return [
        load_source(file, cache_dir=cache_dir, name=os.path.join(spec, os.path.relpath(file, path)))
        for file in files
    ]


def load_source(
    spec: str,
    *,
    config_name: str | None = None,
    cache_dir: str | None = None,
    default_split: str = "train",
    name: str | None = None,
) -> Source:
    """Load one file, directory, or Hub dataset.

    Args:
        spec: A local file (``.parquet``, ``.jsonl``, ``.json``, ``.csv``, ``.arrow``), a local dataset
            directory (read as one dataset; `load_sources` reads it file by file), or a Hub dataset id,
            optionally with a split: ``openai/gsm8k:test``.
        config_name: The dataset configuration for Hub datasets (``main`` for ``openai/gsm8k``).
        cache_dir: ``datasets`` cache directory (default: the ``datasets`` default).
        default_split: Split to read from directories and Hub datasets when ``spec`` names none.
        name: How error messages name the source (default: ``spec``).

    Raises:
        DataFileError: When the source does not exist or cannot be read.
    """
    name = name or spec
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        builder = _builder_for(path)
        if builder is None:
            raise DataFileError(f"{name}: unknown file type; expected one of {sorted(BUILDERS)}")
        if os.path.getsize(path) == 0:
            raise DataFileError(f"{name}: the file is empty")
        if builder in TEXT_KINDS:
            return Source(name=name, dataset=read_rows(path, builder, name, cache_dir), typed=False)
        kwargs: dict = {"path": builder, "data_files": os.path.abspath(path), "split": "train"}
    elif os.path.isdir(path):
        kwargs = {"path": os.path.abspath(path), "split": default_split}
    elif is_local_path(spec):
        raise DataFileError(f"{name}: no such file")
    else:
        hub_id, _, split = spec.partition(":")
        kwargs = {"path": hub_id, "name": config_name, "split": split or default_split}
    try:
        dataset = datasets.load_dataset(**kwargs, cache_dir=cache_dir)
    except Exception as error:  # datasets wraps arrow, parquet and network errors in many types
        cause = error.__cause__ or error
        raise DataFileError(f"{name}: cannot read it: {type(cause).__name__}: {cause}") from None
    if not isinstance(dataset, datasets.Dataset):
        raise DataFileError(f"{name}: expected a map-style dataset split, got {type(dataset).__name__}")
    return Source(name=name, dataset=dataset)


def missing_local_files(groups: Sequence[tuple[str, Any]]) -> list[str]:
    """``data.<key>: <file>: no such file`` for each local file of ``(key, specs)`` that does not exist."""
    problems = []
    for key, specs in groups:
        try:
            for spec in expand_specs(specs):
                if is_local_path(spec) and not os.path.exists(os.path.expanduser(spec)):
                    problems.append(f"data.{key}: {spec}: no such file")
        except DataFileError as error:
            problems.append(f"data.{key}: {error}")
    return problems
