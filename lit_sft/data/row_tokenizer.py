"""The ``datasets.map`` function of the data pipeline: a batch of rows to token ids, labels and a status
per row (never an exception: `lit_sft.data.splits.tokenize_split` turns statuses into errors or counts).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import datasets
from transformers import PreTrainedTokenizerBase

from lit_sft.batch import IGNORE_INDEX
from lit_sft.data.conversation import FormatOptions, row_to_conversation
from lit_sft.data.render import ConversationRenderer
from lit_sft.data.tokenize import (
    TokenizeOptions,
    tokenize_rendered,
    truncate,
)
from lit_sft.errors import InvalidRow
from lit_sft.hub import tokenizer_fingerprint

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
        num_trained = len(labels) - labels.count(IGNORE_INDEX)  # list.count: C speed, a tenth of sum()
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
