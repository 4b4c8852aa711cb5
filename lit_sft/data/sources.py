"""Reading data files and Hub datasets with ``datasets.load_dataset``, one source at a time.

Each file is loaded on its own so that every row keeps its provenance (file, row) for error messages,
and so that ``datasets`` caches each file's Arrow conversion and tokenization separately.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import datasets

from lit_sft.errors import DataFileError

#: File endings and the ``datasets`` builder that reads them.
BUILDERS = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".csv": "csv",
    ".arrow": "arrow",
}


@dataclass
class Source:
    """One loaded data source.

    Attributes:
        name: The file path or Hub id, as error messages name it.
        dataset: Its rows.
    """

    name: str
    dataset: datasets.Dataset


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


def _first_bad_json_line(path: str) -> str:
    """Find the first line of a jsonl file that is not valid UTF-8 JSON (for the error message)."""
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as error:
                    return f"line {number} is not valid UTF-8 ({error.reason} at byte {error.start})"
                except json.JSONDecodeError as error:
                    return f"line {number} is not valid JSON ({error.msg}, column {error.colno})"
    except OSError:
        return ""
    return ""


def load_source(
    spec: str, *, config_name: str | None = None, cache_dir: str | None = None, default_split: str = "train"
) -> Source:
    """Load one file, directory, or Hub dataset.

    Args:
        spec: A local file (``.parquet``, ``.jsonl``, ``.json``, ``.csv``, ``.arrow``), a local dataset
            directory, or a Hub dataset id, optionally with a split: ``openai/gsm8k:test``.
        config_name: The dataset configuration for Hub datasets (``main`` for ``openai/gsm8k``).
        cache_dir: ``datasets`` cache directory (default: the ``datasets`` default).
        default_split: Split to read from directories and Hub datasets when ``spec`` names none.

    Raises:
        DataFileError: When the source does not exist or cannot be read.
    """
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        builder = _builder_for(path)
        if builder is None:
            raise DataFileError(f"{spec}: unknown file type; expected one of {sorted(BUILDERS)}")
        if os.path.getsize(path) == 0:
            raise DataFileError(f"{spec}: the file is empty")
        kwargs: dict = {"path": builder, "data_files": os.path.abspath(path), "split": "train"}
    elif os.path.isdir(path):
        kwargs = {"path": os.path.abspath(path), "split": default_split}
    elif is_local_path(spec):
        raise DataFileError(f"{spec}: no such file")
    else:
        name, _, split = spec.partition(":")
        kwargs = {"path": name, "name": config_name, "split": split or default_split}
    try:
        dataset = datasets.load_dataset(**kwargs, cache_dir=cache_dir)
    except Exception as error:  # datasets wraps arrow, JSON and network errors in many types
        detail = _first_bad_json_line(path) if os.path.isfile(path) and kwargs["path"] == "json" else ""
        cause = error.__cause__ or error
        raise DataFileError(
            f"{spec}: cannot read it: {detail or f'{type(cause).__name__}: {cause}'}"
        ) from None
    if not isinstance(dataset, datasets.Dataset):
        raise DataFileError(f"{spec}: expected a map-style dataset split, got {type(dataset).__name__}")
    if kwargs["path"] in ("json", "csv"):
        # Arrow's text readers do not check UTF-8; a bad byte would only fail later, deep inside map.
        try:
            dataset.data.table.validate(full=True)
        except Exception as error:
            detail = _first_bad_json_line(path) if kwargs["path"] == "json" else ""
            raise DataFileError(f"{spec}: cannot read it: {detail or error}") from None
    return Source(name=spec, dataset=dataset)
