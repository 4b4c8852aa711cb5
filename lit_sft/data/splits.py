"""From loaded sources to tokenized, validated splits, through cached ``datasets.map``.

Bad rows never raise inside ``map`` (that would surface as a deep ``datasets`` traceback and poison the
cache): the map (`lit_sft.data.row_tokenizer.RowTokenizer`) records a status per row, and `tokenize_split`
then raises one `RowError` naming the file, row and field, or, with ``skip_invalid_rows``, drops the rows
and counts them by reason. Rows left with no trained token after truncation are always dropped and
counted. Every split gets one summary line.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lit_sft.data.conversation import FormatOptions, required_columns, resolve_format
from lit_sft.data.mixture import cap_positions
from lit_sft.data.processes import usable_cores
from lit_sft.data.row_tokenizer import DROPPED_NOT_INVALID, OK
from lit_sft.data.sources import Source
from lit_sft.errors import DataFileError, RowError

log = logging.getLogger("lit_sft")


@dataclass
class SplitSummary:
    """What happened to one split's rows.

    Attributes:
        split: ``train`` or ``val`` (for a source's summary: the source's name).
        rows_read: Rows read from the sources (after the split and ``max_samples``).
        kept: Rows kept for training.
        dropped: Dropped rows by reason.
        truncated: Kept rows that lost tokens to truncation.
        tokens: Tokens in kept rows.
        trained_tokens: Trained (label) tokens in kept rows.
        split_rows: Rows added by splitting conversations whose template rewrites history (a
            conversation made ``n`` rows adds ``n - 1``).
        split_tokens: Tokens those added rows cost: kept tokens minus, for each conversation, its longest row.
        template_losses: Kept conversations whose rendering lacks content of the data, by field kind
            (``tool_calls``, ``content``, ``reasoning_content``).
        template_loss_example: The first such row, as ``file, row N, field F``.
        sources: The same counts for each source (``data.train_files`` entry), by name, in order.
        rows_per_epoch: A weighted source's rows in each epoch (`lit_sft.data.mixture`); None otherwise.
    """

    split: str
    rows_read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    split_rows: int = 0
    split_tokens: int = 0
    template_losses: dict[str, int] = field(default_factory=dict)
    template_loss_example: str = ""
    sources: dict[str, SplitSummary] = field(default_factory=dict)
    rows_per_epoch: int | None = None

    def line(self) -> str:
        """The one-line summary printed for the split."""
        total_dropped = sum(self.dropped.values())
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.dropped.items()))
        dropped = f"{total_dropped} dropped ({reasons})" if total_dropped else "0 dropped"
        per_epoch = f", {self.rows_per_epoch} rows per epoch" if self.rows_per_epoch is not None else ""
        line = (
            f"{self.split}: {self.rows_read} rows read, {self.kept} kept, {dropped}, {self.truncated} truncated, "
            f"{self.tokens} tokens, {self.trained_tokens} trained tokens{per_epoch}"
        )
        if self.split_rows:
            line += (
                f"; {self.split_rows} rows added by splitting conversations whose chat template rewrites history "
                f"({self.split_tokens} tokens of repeated history)"
            )
        if self.template_losses:
            kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(self.template_losses.items()))
            line += (
                f"; {sum(self.template_losses.values())} rows whose chat template drops content ({kinds}; "
                f"first: {self.template_loss_example}; data.strict_template=true refuses them)"
            )
        return line

    def lines(self) -> list[str]:
        """The split's line, then one line per source when there are several (or a mixture)."""
        if len(self.sources) < 2 and all(source.rows_per_epoch is None for source in self.sources.values()):
            return [self.line()]
        return [self.line(), *(f"  source {source.line()}" for source in self.sources.values())]

    def add(self, other: SplitSummary) -> None:
        """Add ``other``'s counts to these (a source's to its split's)."""
        self.rows_read += other.rows_read
        self.kept += other.kept
        self.truncated += other.truncated
        self.tokens += other.tokens
        self.trained_tokens += other.trained_tokens
        for reason, count in other.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + count


def column(dataset: datasets.Dataset, name: str) -> np.ndarray:
    """A numeric column as an int64 array, straight from Arrow (no Python list in between)."""
    # `[:]` reads the whole column at once; indexing by name returns a lazy Column that iterates rows.
    return np.asarray(dataset.select_columns([name]).with_format("numpy")[:][name], dtype=np.int64)


def split_positions(sizes: Sequence[int], val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (over the concatenated sources) of the train and validation rows, each sorted.

    A seeded permutation picks ``round(val_ratio * n)`` rows (at least one when ``val_ratio > 0``) for
    validation; the same seed and sizes always give the same split.
    """
    total = int(sum(sizes))
    if val_ratio <= 0:
        return np.arange(total), np.arange(0)
    permutation = np.random.default_rng(seed).permutation(total)
    num_val = min(total, max(1, round(val_ratio * total)))
    return np.sort(permutation[num_val:]), np.sort(permutation[:num_val])


def choose_positions(
    train_sources: list[Source],
    val_sources: list[Source] | None,
    val_ratio: float,
    seed: int,
    ranges: Any,
    caps: Sequence[int | None],
    max_train_samples: int | None,
    max_val_samples: int | None,
) -> dict[str, tuple[list[Source], np.ndarray]]:
    """Each split's sources and row positions (over its concatenated sources): ``{split: (sources,
    positions)}``, ``val`` only when it has rows.

    Without validation sources, `split_positions` holds out ``val_ratio`` of the training rows (which are
    then the validation sources too); then each source's cap (`cap_positions` over its ``ranges``) and each
    split's ``max_*_samples`` keep the first rows.
    """
    train_sizes = [len(source.dataset) for source in train_sources]
    if val_sources is not None:
        train_positions = np.arange(sum(train_sizes))
        val_positions = np.arange(sum(len(source.dataset) for source in val_sources))
    else:
        train_positions, val_positions = split_positions(train_sizes, val_ratio, seed)
    if any(cap is not None for cap in caps):
        train_positions = cap_positions(train_positions, ranges, caps)
    if max_train_samples is not None:
        train_positions = train_positions[:max_train_samples]
    if max_val_samples is not None:
        val_positions = val_positions[:max_val_samples]
    splits = {"train": (train_sources, train_positions)}
    if len(val_positions):
        splits["val"] = (train_sources if val_sources is None else val_sources, val_positions)
    return splits


def _select_rows(dataset: datasets.Dataset, rows: np.ndarray) -> datasets.Dataset:
    if len(rows) == len(dataset) and (len(rows) == 0 or rows[-1] == len(rows) - 1):
        return dataset
    return dataset.select(rows)


@dataclass
class TokenizedSource:
    """One source's selected rows after the tokenizing ``map`` (every row, with its status).

    Attributes:
        source: The loaded source.
        rows: The selected rows' indices in the source file.
        tokenized: The map output, one row per selected row, in order.
    """

    source: Source
    rows: np.ndarray
    tokenized: datasets.Dataset
    extra_columns: tuple[str, ...] = ()

    @property
    def source_rows(self) -> np.ndarray:
        """For each tokenized row, the position (into ``rows``) of the input row it comes from."""
        if "row" in self.tokenized.column_names:
            return self.tokenized.data.column("row").to_numpy()
        return np.arange(len(self.tokenized))

    def file_row(self, position: int) -> int:
        """The row index in the source file of the tokenized row at ``position``."""
        return int(self.rows[self.source_rows[position]])

    # The status and lost columns are read through Arrow compute: a million rows as Python strings would be
    # a million objects (about 60 MB each time); these are a byte per row. A fresh map output has no indices
    # mapping, so its Arrow columns are in row order.
    def status_in(self, *statuses: str) -> np.ndarray:
        """For each tokenized row, whether its status is one of ``statuses``."""
        column = self.tokenized.data.column("status")
        return pc.is_in(column, value_set=pa.array(statuses, pa.string())).to_numpy(zero_copy_only=False)

    def status(self, position: int) -> str:
        return str(self.tokenized.data.column("status")[int(position)].as_py())

    def dropped(self) -> dict[str, int]:
        """How many rows have each status other than ``ok``."""
        column = self.tokenized.data.column("status")
        counts = pc.value_counts(pc.filter(column, pc.not_equal(column, OK)))
        return {str(entry["values"]): int(entry["counts"]) for entry in counts.to_pylist()}

    def lost(self, positions: np.ndarray) -> dict[int, str]:
        """Of the rows at ``positions``, those whose template dropped content: {position: the fields}."""
        if "lost" not in self.tokenized.column_names or len(positions) == 0:
            return {}
        column = self.tokenized.data.column("lost")
        some = pc.not_equal(column, "").to_numpy(zero_copy_only=False)[positions]
        chosen = positions[some]
        return dict(zip(chosen.tolist(), column.take(pa.array(chosen)).to_pylist(), strict=True))

    def invalid(self) -> np.ndarray:
        """Positions (into ``tokenized``) of malformed rows."""
        return np.flatnonzero(~self.status_in(OK, *DROPPED_NOT_INVALID))

    def row_error(self, position: int, more: str = "") -> RowError:
        """The error of the malformed row at ``position``, naming its file and row."""
        field_name, reason = self.tokenized[int(position)]["error"].split("\t", 1)
        status = self.status(position)
        skip = "set data.skip_invalid_rows=true to drop such rows and count them"
        hint = {
            "template_not_prefix_stable": "Or " + skip,
            "template_generation_prompt": "Set model.chat_template to a template that does, or " + skip,
            "template_dropped_content": "Set data.strict_template=false to keep and count such rows, or "
            + skip,
        }.get(str(status), "Fix the data, or " + skip)
        return RowError(self.source.name, self.file_row(position), field_name, reason + more, hint=hint)


#: Rows below which tokenization stays in this process: starting workers (each unpickles the tokenizer)
#: costs more than it saves on fewer rows (GSM8K's 7,473 rows take a few seconds on one core).
PARALLEL_ROWS = 20_000
#: Most worker processes by default: beyond this, datasets' per-shard overhead and memory outgrow the gain.
MAX_DEFAULT_PROCESSES = 16


def default_num_proc(rows: int) -> int:
    """Tokenization processes when ``data.num_proc`` is unset: every core this process may use, shared
    among the ranks of this node (each tokenizes its own copy), at most `MAX_DEFAULT_PROCESSES`; one for
    fewer than `PARALLEL_ROWS` rows."""
    if rows < PARALLEL_ROWS:
        return 1
    return max(1, min(MAX_DEFAULT_PROCESSES, usable_cores(), rows // (PARALLEL_ROWS // 2)))


def tokenize_sources(
    sources: Sequence[Source], positions: np.ndarray, row_tokenizer_for: Any, num_proc: int | None = None
) -> list[TokenizedSource]:
    """Run the cached tokenizing ``map`` over the rows at ``positions`` (over the concatenated sources),
    on ``num_proc`` processes (None: `default_num_proc`)."""
    results = []
    offset = 0
    for source in sources:
        size = len(source.dataset)
        rows = positions[(positions >= offset) & (positions < offset + size)] - offset
        offset += size
        if len(rows) == 0:
            continue
        row_tokenizer = row_tokenizer_for(source)
        selected = _select_rows(source.dataset, rows)
        fingerprint = hashlib.sha256(
            f"{selected._fingerprint}-{row_tokenizer.fingerprint()}".encode()
        ).hexdigest()
        tokenized = selected.map(
            row_tokenizer,
            batched=True,
            batch_size=256,
            remove_columns=selected.column_names,
            features=row_tokenizer.features,
            new_fingerprint=fingerprint[:32],
            num_proc=processes if (processes := num_proc or default_num_proc(len(rows))) > 1 else None,
            with_indices="row" in row_tokenizer.features,
            desc=f"Tokenizing {source.name}",
        ).with_format(
            None
        )  # the source's JSON-column transform (see row_store.JsonColumns) is not the output's
        results.append(TokenizedSource(source, rows, tokenized, row_tokenizer.extra_columns))
    return results


def tokenize_split(
    split: str,
    sources: Sequence[Source],
    positions: np.ndarray,
    row_tokenizer_for: Any,
    *,
    skip_invalid_rows: bool,
    num_proc: int | None = None,
) -> tuple[datasets.Dataset | None, SplitSummary]:
    """Tokenize the rows at ``positions`` (over the concatenated ``sources``) and validate them.

    Args:
        split: The split's name, for the summary.
        sources: The loaded sources, in order.
        positions: Sorted row positions over the concatenation of ``sources``.
        row_tokenizer_for: ``callable(source) -> RowTokenizer`` (the format is resolved per source).
        skip_invalid_rows: Drop and count malformed rows instead of raising.
        num_proc: Processes for ``datasets.map``.

    Returns:
        The kept rows (columns ``input_ids``, ``labels``, ``num_tokens``, ``num_trained``,
        ``original_length``), or None when
        there are no rows, and the split's summary.

    Raises:
        RowError: For the first malformed row, unless ``skip_invalid_rows``.
    """
    summary = SplitSummary(split=split)
    # Every source is named in the summary, in order, even one none of whose rows the split selected.
    for source in sources:
        label = getattr(source, "label", "") or source.name
        summary.sources.setdefault(label, SplitSummary(split=label))
    parts: list[datasets.Dataset] = []
    for part in tokenize_sources(sources, positions, row_tokenizer_for, num_proc):
        bad = part.invalid()
        if len(bad) and not skip_invalid_rows:
            more = f" ({len(bad) - 1} more rows of this file have errors)" if len(bad) > 1 else ""
            raise part.row_error(bad[0], more)
        keep = np.flatnonzero(part.status_in(OK))
        table = part.tokenized.data
        counts = SplitSummary(
            split=part.source.name,
            rows_read=len(part.rows),
            kept=len(keep),
            dropped=part.dropped(),
            truncated=int(table.column("truncated").to_numpy()[keep].sum()),
            tokens=int(table.column("num_tokens").to_numpy()[keep].sum()),
            trained_tokens=int(table.column("num_trained").to_numpy()[keep].sum()),
        )
        summary.add(counts)
        summary.sources[getattr(part.source, "label", "") or part.source.name].add(counts)
        _count_splits_and_losses(summary, part, keep)
        if len(keep) == 0:
            continue
        kept = part.tokenized.select(keep) if len(keep) < len(part.tokenized) else part.tokenized
        parts.append(
            kept.select_columns(
                # original_length: what truncation cut, for `lit_sft.data.highlight`
                ["input_ids", "labels", "num_tokens", "num_trained", "original_length", *part.extra_columns]
            )
        )
    if not parts:
        return None, summary
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return dataset, summary


def _count_splits_and_losses(summary: SplitSummary, part: TokenizedSource, keep: np.ndarray) -> None:
    """Add a source's split conversations and template losses (over its kept rows) to the summary."""
    if len(keep) == 0:
        return
    source_rows = part.source_rows[keep]
    # The rows of one conversation are adjacent: each conversation starts where the source row changes.
    starts = np.flatnonzero(np.r_[True, source_rows[1:] != source_rows[:-1]])
    if len(starts) < len(keep):
        lengths = part.tokenized.data.column("num_tokens").to_numpy()[keep].astype(np.int64)
        summary.split_rows += len(keep) - len(starts)
        summary.split_tokens += int(lengths.sum() - np.maximum.reduceat(lengths, starts).sum())
    losses = Counter(summary.template_losses)
    for position, lost in part.lost(keep).items():
        fields = lost.split(", ")
        losses.update({re.sub(r"\[\d+\]$", "", field.rsplit(".", 1)[-1]) for field in fields})
        if not summary.template_loss_example:
            row = part.file_row(position)
            summary.template_loss_example = f"{part.source.name}, row {row}, field '{fields[0]}'"
    summary.template_losses = dict(losses)


def check_columns(source: Source, format_options: FormatOptions) -> Literal["prompt_response", "messages"]:
    """Resolve the row format for a source and check it has the columns the format needs.

    Raises:
        DataFileError: Naming the file, the missing column and the columns it has.
    """
    columns = source.dataset.column_names
    row_format = resolve_format(columns, format_options)
    missing = [column for column in required_columns(row_format, format_options) if column not in columns]
    if missing:
        raise DataFileError(
            f"{source.name}: missing column {missing[0]!r} for the {row_format} format; it has {columns}. "
            "Set data.prompt_key/response_key/messages_key (dotted paths reach into nested columns) or data.format"
        )
    return row_format
