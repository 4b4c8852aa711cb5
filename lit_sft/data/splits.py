"""From loaded sources to tokenized, validated splits, through cached ``datasets.map``.

Bad rows never raise inside ``map`` (that would surface as a deep ``datasets`` traceback and poison the
cache): the map records a status per row, and `tokenize_split` then raises one `RowError` naming the
file, row and field, or, with ``skip_invalid_rows``, drops the rows and counts them by reason. Rows left
with no trained token after truncation are always dropped and counted. Every split gets one summary line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from lit_sft.batch import IGNORE_INDEX
from lit_sft.data.conversation import FormatOptions, required_columns, resolve_format, row_to_conversation
from lit_sft.data.sources import Source
from lit_sft.data.tokenize import (
    ConversationRenderer,
    TokenizeOptions,
    tokenize_rendered,
    truncate,
)
from lit_sft.errors import DataFileError, InvalidRow, RowError
from lit_sft.hub import tokenizer_fingerprint

log = logging.getLogger("lit_sft")

#: Bump when the tokenized output changes for the same inputs, so that old caches are not reused.
PIPELINE_VERSION = "4"

OK = "ok"
NO_TRAINED_TOKENS = "no_trained_tokens"
#: Truncation would have cut through an image's tokens (vision-language rows).
IMAGE_TRUNCATED = "image_truncated"
#: Statuses of well-formed rows that are dropped and counted, never raised as errors.
DROPPED_NOT_INVALID = (NO_TRAINED_TOKENS, IMAGE_TRUNCATED)

TOKENIZED_FEATURES = datasets.Features(
    {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Sequence(datasets.Value("int32")),
        "num_tokens": datasets.Value("int32"),
        "num_trained": datasets.Value("int32"),
        "prompt_length": datasets.Value("int32"),
        "original_length": datasets.Value("int32"),
        "truncated": datasets.Value("bool"),
        "status": datasets.Value("string"),
        "error": datasets.Value("string"),
    }
)
#: What `RowTokenizer` writes: the above, plus where each row comes from and what its template dropped.
TEXT_FEATURES = datasets.Features(
    {
        **TOKENIZED_FEATURES,
        # The input row (position in the selected rows) this row comes from: a conversation whose template
        # rewrites history can become several rows (`TokenizeOptions.rewritten_turns`).
        "row": datasets.Value("int64"),
        # Fields whose content the chat template did not render ("" for none); on a conversation's first row.
        "lost": datasets.Value("string"),
    }
)


@dataclass
class RejectedRow:
    """A row `RowTokenizer` could not turn into a training example: why, and its length when it had one."""

    error: InvalidRow
    original_length: int = 0


class RowTokenizer:
    """The ``datasets.map`` function: a batch of rows to token ids, labels and a status per row.

    Args:
        tokenizer: The model's tokenizer (with its chat template).
        row_format: The resolved row format.
        format_options: How to read conversations from rows.
        tokenize_options: Length limits and truncation.
        template_kwargs: Extra chat-template variables.
    """

    #: The map output's schema, and the columns besides ids, labels and counts that batches need.
    features = TEXT_FEATURES
    extra_columns: tuple[str, ...] = ()

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        row_format: Literal["prompt_response", "messages"],
        format_options: FormatOptions,
        tokenize_options: TokenizeOptions,
        template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.row_format = row_format
        self.format_options = format_options
        self.tokenize_options = tokenize_options
        self.template_kwargs = dict(template_kwargs or {})
        self._renderer: ConversationRenderer | None = None

    def fingerprint(self) -> str:
        """A hash of everything that decides this function's output for a given input."""
        payload = json.dumps(
            {
                "version": PIPELINE_VERSION,
                "tokenizer": tokenizer_fingerprint(self.tokenizer),
                "row_format": self.row_format,
                "format": asdict(self.format_options),
                "tokenize": asdict(self.tokenize_options),
                "template_kwargs": self.template_kwargs,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_renderer": None}

    @property
    def renderer(self) -> ConversationRenderer:
        """The chat-template renderer, built on first use (in each ``map`` worker process)."""
        if self._renderer is None:
            options = self.tokenize_options
            self._renderer = ConversationRenderer(
                self.tokenizer, self.template_kwargs, options.rewritten_turns, options.strict_template
            )
        return self._renderer

    def __call__(self, batch: dict[str, list[Any]], indices: list[int] | None = None) -> dict[str, list[Any]]:
        size = len(next(iter(batch.values()))) if batch else 0
        indices = list(indices) if indices is not None else list(range(size))
        rows = [{key: values[i] for key, values in batch.items()} for i in range(size)]
        out: dict[str, list[Any]] = {name: [] for name in self.features}
        for index, result in zip(indices, self.tokenize_rows(rows), strict=True):
            # A conversation split by `TokenizeOptions.rewritten_turns` gives several records.
            for item in result if isinstance(result, list) else [result]:
                record = self._rejected(item) if isinstance(item, RejectedRow) else self._kept(item)
                record.setdefault("row", index)
                record.setdefault("lost", "")
                for name in self.features:
                    out[name].append(record[name])
        return out

    def tokenize_rows(
        self, rows: list[dict[str, Any]]
    ) -> Sequence[list[dict[str, Any]] | dict[str, Any] | RejectedRow]:
        """Per row: its ``input_ids``, ``labels``, ``original_length``, ``truncated`` and `extra_columns`
        (a list of these for a conversation split into several rows, ``lost`` on its first), or why it
        was rejected. Text rows are tokenized together, which is much faster than one by one."""
        results: list[Any] = [None] * len(rows)  # every row gets records or a rejection below
        rendered, rendered_at, fields = [], [], []
        for i, row in enumerate(rows):
            try:
                conversation = row_to_conversation(row, self.row_format, self.format_options)
                pieces = self.renderer.render_rows(conversation)
            except InvalidRow as error:
                results[i] = RejectedRow(error)
                continue
            results[i] = []
            rendered.extend(pieces)
            rendered_at.extend([i] * len(pieces))
            fields.extend([conversation.field] * len(pieces))
        for i, field_name, piece, (input_ids, labels) in zip(
            rendered_at, fields, rendered, tokenize_rendered(self.tokenizer, rendered), strict=True
        ):
            if isinstance(results[i], RejectedRow):
                continue  # another row of this conversation was rejected, and so is the conversation
            try:
                tokenized = truncate(input_ids, labels, self.tokenize_options, field_name)
            except InvalidRow as error:
                results[i] = RejectedRow(error, original_length=len(input_ids))
                continue
            results[i].append(
                {
                    "input_ids": tokenized.input_ids,
                    "labels": tokenized.labels,
                    "original_length": tokenized.original_length,
                    "truncated": tokenized.truncated,
                    "lost": piece.lost,
                }
            )
        return results

    @staticmethod
    def _kept(record: dict[str, Any]) -> dict[str, Any]:
        labels = record["labels"]
        num_trained = sum(label != IGNORE_INDEX for label in labels)
        return {
            **record,
            "num_tokens": len(record["input_ids"]),
            "num_trained": num_trained,
            "prompt_length": next(
                (k for k, label in enumerate(labels) if label != IGNORE_INDEX), len(labels)
            ),
            "status": OK if num_trained > 0 else NO_TRAINED_TOKENS,
            "error": "",
        }

    def _rejected(self, rejected: RejectedRow) -> dict[str, Any]:
        error = rejected.error
        return {
            **{name: [] for name in ("input_ids", "labels", *self.extra_columns)},
            "num_tokens": 0,
            "num_trained": 0,
            "prompt_length": 0,
            "original_length": rejected.original_length,
            "truncated": False,
            "status": error.kind,
            "error": f"{error.field}\t{error.reason}",
        }


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

    def lost(self) -> np.ndarray:
        """For each tokenized row, the fields whose content the template did not render ("" for none)."""
        if "lost" in self.tokenized.column_names:
            return self.tokenized.data.column("lost").to_numpy(zero_copy_only=False)
        return np.full(len(self.tokenized), "", dtype=object)

    @property
    def statuses(self) -> np.ndarray:
        # A fresh map output has no indices mapping, so its Arrow columns are in row order.
        return self.tokenized.data.column("status").to_numpy(zero_copy_only=False)

    def invalid(self) -> np.ndarray:
        """Positions (into ``tokenized``) of malformed rows."""
        statuses = self.statuses
        return np.flatnonzero((statuses != OK) & ~np.isin(statuses, DROPPED_NOT_INVALID))

    def row_error(self, position: int, more: str = "") -> RowError:
        """The error of the malformed row at ``position``, naming its file and row."""
        field_name, reason = self.tokenized[int(position)]["error"].split("\t", 1)
        status = self.statuses[position]
        skip = "set data.skip_invalid_rows=true to drop such rows and count them"
        hint = {
            "template_not_prefix_stable": "Or " + skip,
            "template_generation_prompt": "Set model.chat_template to a template that does, or " + skip,
            "template_dropped_content": "Set data.strict_template=false to keep and count such rows, or "
            + skip,
        }.get(str(status), "Fix the data, or " + skip)
        return RowError(self.source.name, self.file_row(position), field_name, reason + more, hint=hint)


def tokenize_sources(
    sources: Sequence[Source], positions: np.ndarray, row_tokenizer_for: Any, num_proc: int | None = None
) -> list[TokenizedSource]:
    """Run the cached tokenizing ``map`` over the rows at ``positions`` (over the concatenated sources)."""
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
            num_proc=num_proc if num_proc and num_proc > 1 else None,
            with_indices="row" in row_tokenizer.features,
            desc=f"Tokenizing {source.name}",
        ).with_format(
            None
        )  # the source's JSON-column transform (see readers.JsonColumns) is not the output's
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
        statuses = part.statuses
        bad = part.invalid()
        if len(bad) and not skip_invalid_rows:
            more = f" ({len(bad) - 1} more rows of this file have errors)" if len(bad) > 1 else ""
            raise part.row_error(bad[0], more)
        keep = np.flatnonzero(statuses == OK)
        table = part.tokenized.data
        counts = SplitSummary(
            split=part.source.name,
            rows_read=len(part.rows),
            kept=len(keep),
            dropped=dict(Counter(statuses[statuses != OK].tolist())),
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
    lost = part.lost()[keep]
    losses = Counter(summary.template_losses)
    for position in np.flatnonzero(lost != ""):
        fields = str(lost[position]).split(", ")
        losses.update({re.sub(r"\[\d+\]$", "", field.rsplit(".", 1)[-1]) for field in fields})
        if not summary.template_loss_example:
            row = part.file_row(int(keep[position]))
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
