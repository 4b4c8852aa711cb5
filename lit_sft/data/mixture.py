"""Weighted data mixtures: several sources, each with its own files, format options and share of an epoch.

``data.train_files`` takes plain paths (``[a.jsonl, b.parquet]``: every row of every file, once an
epoch) or `DataSource` entries, or a mix of both::

    train_files:
      - files: data/gsm8k/train.parquet
        weight: 3
      - files: [data/chat/*.jsonl]
        format: messages
        system_prompt: You are a helpful assistant.
        weight: 1
        max_samples: 20000

Rows per epoch: an epoch has as many rows as all sources have together (after ``max_samples``, the
validation split and dropped rows); a source with a ``weight`` gets ``weight / sum of weights`` of them.
A source with fewer rows than its share is up-sampled: each of its rows appears ``share // rows`` times
plus a random subset of ``share % rows`` rows; one with more is down-sampled to a random subset, a new
one every epoch (so the epochs together see more of it). That is sampling *without* replacement within
each pass over a source; ``replacement: true`` draws the source's share independently instead (rows may
repeat, any number of times). The draws are seeded by the data module's ``seed``, the epoch and the
source, so a run resumed mid-epoch continues on the very same rows. Validation rows are never weighted:
every held-out row of every source is evaluated once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypedDict

import numpy as np
from typing_extensions import Required  # typing.Required is 3.11+

from lit_sft.data.conversation import AssistantTurns, FormatOptions, RowFormat
from lit_sft.data.sources import Source, expand_specs
from lit_sft.errors import ConfigError

#: FormatOptions fields a `DataSource` may set for itself (None: the data module's value).
FORMAT_FIELDS = (
    "format",
    "prompt_key",
    "response_key",
    "messages_key",
    "tools_key",
    "assistant_turns",
    "system_prompt",
)


@dataclass
class DataSource:
    """One source of a training mixture.

    Args:
        files: Files (globs allowed), dataset directories or Hub dataset ids, as in ``data.train_files``.
        name: The source's name in summaries and ``lit-sft data check`` (default: its files).
        weight: Share of each epoch's training rows, relative to the other sources' weights (give every
            source a weight, or none). None: every row once an epoch.
        replacement: Draw the source's share with replacement (rows may repeat any number of times)
            instead of whole passes over its rows plus a random subset.
        max_samples: Use at most this many of the source's rows (its first ones after the validation split).
        format: Row format of this source (``prompt_response``, ``messages`` or ``auto``).
        prompt_key: Prompt column or dotted path of this source.
        response_key: Response column or dotted path of this source.
        messages_key: Messages column or dotted path of this source.
        tools_key: Tools column of this source.
        assistant_turns: Train ``all`` assistant turns of this source's ``messages`` rows or the ``last``.
        system_prompt: A system message for this source's conversations that have none.
    """

    files: str | list[str]
    name: str | None = None
    weight: float | None = None
    replacement: bool = False
    max_samples: int | None = None
    format: RowFormat | None = None
    prompt_key: str | None = None
    response_key: str | None = None
    messages_key: str | None = None
    tools_key: str | None = None
    assistant_turns: AssistantTurns | None = None
    system_prompt: str | None = None

    @property
    def label(self) -> str:
        """The name summaries use."""
        if self.name:
            return self.name
        return self.files if isinstance(self.files, str) else ", ".join(self.files)

    def format_options(self, defaults: FormatOptions) -> FormatOptions:
        """``defaults`` with the format options this source sets."""
        overrides = {name: getattr(self, name) for name in FORMAT_FIELDS if getattr(self, name) is not None}
        return replace(defaults, **overrides)


class SourceSpec(TypedDict, total=False):
    """A `DataSource` as a config writes it: the same keys (``files`` required), checked by jsonargparse.

    ``data.train_files`` is typed with this rather than with `DataSource` because jsonargparse reads a
    dataclass-typed value that names an existing file as a config file: a plain ``train.csv`` given on the
    command line would be replaced by its contents.
    """

    files: Required[str | list[str]]
    name: str | None
    weight: float | None
    replacement: bool
    max_samples: int | None
    format: RowFormat | None
    prompt_key: str | None
    response_key: str | None
    messages_key: str | None
    tools_key: str | None
    assistant_turns: AssistantTurns | None
    system_prompt: str | None


@dataclass
class LabeledSource(Source):
    """A loaded `Source` that knows which `DataSource` it belongs to and how to read its rows.

    Attributes:
        label: The `DataSource` label.
        format_options: How to read its rows.
    """

    label: str = ""
    format_options: FormatOptions | None = None


TrainFiles = str | Sequence[str | DataSource | SourceSpec | dict[str, Any]] | None


def data_sources(train_files: TrainFiles) -> list[DataSource]:
    """``data.train_files`` as `DataSource` entries (a plain path is a source with default options; a dict,
    as a checkpoint's hyper-parameters hold it, becomes a `DataSource`), checked.

    Raises:
        ConfigError: For weights on some sources only, a weight or ``max_samples`` below 1 (0 for weights),
            two sources of the same name, or a source without files.
    """
    if train_files is None:
        return []
    entries = [train_files] if isinstance(train_files, str | DataSource | dict) else list(train_files)
    sources = []
    for entry in entries:
        if isinstance(entry, str):
            entry = DataSource(files=entry)
        elif isinstance(entry, dict):
            unknown = sorted(set(entry) - {field.name for field in fields(DataSource)})
            if unknown or "files" not in entry:
                raise ConfigError(
                    f"data.train_files: a source needs 'files' and takes only DataSource's keys; got {sorted(entry)}"
                )
            entry = DataSource(**entry)
        if not entry.files:
            raise ConfigError(f"data.train_files: the source {entry.label!r} has no files")
        if entry.weight is not None and not entry.weight > 0:
            raise ConfigError(
                f"data.train_files: the weight of {entry.label!r} must be positive, got {entry.weight}"
            )
        if entry.max_samples is not None and entry.max_samples < 1:
            raise ConfigError(f"data.train_files: max_samples of {entry.label!r} must be at least 1")
        sources.append(entry)
    weighted = [source.weight is not None for source in sources]
    if any(weighted) and not all(weighted):
        unweighted = [source.label for source in sources if source.weight is None]
        raise ConfigError(f"data.train_files: give every source a weight, or none; {unweighted} have none")
    labels = [source.label for source in sources]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"data.train_files: several sources are named {duplicates[0]!r}; give them names")
    return sources


def as_plain(sources: Sequence[DataSource]) -> list[dict[str, Any]]:
    """Sources as plain dicts without unset fields (for hyper-parameters and checkpoints)."""
    defaults = {field.name: field.default for field in fields(DataSource)}
    return [
        {key: value for key, value in asdict(source).items() if value != defaults.get(key)}
        for source in sources
    ]


def load_data_sources(
    sources: Sequence[DataSource], defaults: FormatOptions, load: Callable[[str], list[Source]]
) -> tuple[list[LabeledSource], list[tuple[int, int]]]:
    """Load every file of every source (``load(spec)``: a directory gives one `Source` per file), each
    labelled with its source and format options.

    Returns:
        The loaded files in order, and each `DataSource`'s ``[start, end)`` range of row positions over
        their concatenation.
    """
    loaded: list[LabeledSource] = []
    ranges = []
    offset = 0
    for source in sources:
        start = offset
        options = source.format_options(defaults)
        for spec in expand_specs(source.files):
            for file in load(spec):
                loaded.append(
                    LabeledSource(
                        file.name, file.dataset, typed=file.typed, label=source.label, format_options=options
                    )
                )
                offset += len(file.dataset)
        ranges.append((start, offset))
    return loaded, ranges


def cap_positions(
    positions: np.ndarray, ranges: Sequence[tuple[int, int]], caps: Sequence[int | None]
) -> np.ndarray:
    """Keep the first ``caps[i]`` of the sorted ``positions`` inside each ``ranges[i]`` (None: all of them)."""
    kept = []
    for (start, end), cap in zip(ranges, caps, strict=True):
        inside = positions[(positions >= start) & (positions < end)]
        kept.append(inside if cap is None else inside[:cap])
    return np.concatenate(kept) if kept else positions


@dataclass(frozen=True)
class MixturePlan:
    """Which rows of the tokenized training split each epoch uses (see the module docstring).

    Attributes:
        labels: The sources' labels.
        ranges: Each source's ``[start, end)`` rows in the tokenized training split.
        counts: Each source's rows per epoch.
        replacement: Whether each source is drawn with replacement.
        seed: The data module's seed.
    """

    labels: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]
    counts: tuple[int, ...]
    replacement: tuple[bool, ...]
    seed: int

    def rows(self, epoch: int) -> np.ndarray:
        """Row indices (into the tokenized training split) of ``epoch``, source by source, sorted within each."""
        chosen = []
        for index, ((start, end), count, with_replacement) in enumerate(
            zip(self.ranges, self.counts, self.replacement, strict=True)
        ):
            size = end - start
            # Its own stream per (seed, epoch, source): the sampler's shuffle draws from (seed, epoch).
            rng = np.random.default_rng([self.seed, epoch, index, 1])
            if with_replacement:
                picked = rng.integers(0, size, count)
            else:
                passes, rest = divmod(count, size)
                picked = np.concatenate(
                    [np.tile(np.arange(size), passes), rng.choice(size, rest, replace=False)]
                )
            chosen.append(start + np.sort(picked))
        return np.concatenate(chosen).astype(np.int64)


def plan_mixture(sources: Sequence[DataSource], kept: Sequence[int], seed: int) -> MixturePlan | None:
    """The per-epoch plan of weighted ``sources`` whose kept training rows are ``kept`` (in order), or None
    when no source has a weight (every row once an epoch).

    Rows per epoch are split by largest remainders, so that they add up to exactly ``sum(kept)``.

    Raises:
        ConfigError: When a weighted source has no training rows left.
    """
    if not sources or sources[0].weight is None:
        return None
    empty = [source.label for source, rows in zip(sources, kept, strict=True) if rows == 0]
    if empty:
        raise ConfigError(f"data.train_files: the weighted source {empty[0]!r} has no training rows left")
    total = int(sum(kept))
    weights = np.asarray([source.weight for source in sources], dtype=np.float64)
    shares = weights / weights.sum() * total
    counts = np.floor(shares).astype(np.int64)
    for index in np.argsort(-(shares - counts), kind="stable")[: total - int(counts.sum())]:
        counts[index] += 1
    ends = np.cumsum(kept)
    return MixturePlan(
        labels=tuple(source.label for source in sources),
        ranges=tuple((int(end - rows), int(end)) for end, rows in zip(ends, kept, strict=True)),
        counts=tuple(int(count) for count in counts),
        replacement=tuple(source.replacement for source in sources),
        seed=seed,
    )
