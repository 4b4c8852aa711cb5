"""Rendered conversations to token ids and labels: the model-specific half of the data path, with
`lit_sft.data.render` (which renders them with the chat template and finds the trained spans).

The whole rendered text is tokenized once, exactly as ``apply_chat_template(tokenize=True)`` would (so
the prompt tokens are the ones the model sees at inference), and a token is trained when it starts
inside a trained span; then sequences are truncated (`TokenizeOptions`).

Labels follow the Hugging Face convention: aligned with ``input_ids`` (the model shifts), ``-100``
exactly where a token is not a target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

from lit_sft.batch import IGNORE_INDEX
from lit_sft.data.render import RenderedConversation, RewrittenTurns
from lit_sft.errors import ConfigError, InvalidRow

Truncation = Literal["left", "right", "error"]


@dataclass(frozen=True)
class TokenizeOptions:
    """Sequence limits, and what to do with templates that rewrite history or drop content.

    Args:
        max_length: Longest sequence in tokens (prompt and response together); None for no limit.
        max_prompt_length: Longest prompt (the tokens before the first trained token); a longer prompt
            loses its oldest tokens (its left end). None for no limit.
        max_response_length: Longest response (from the first trained token on); a longer response
            loses its end. None for no limit.
        truncation: What to do with a sequence over ``max_length``: ``left`` keeps its last tokens,
            ``right`` keeps its first tokens, ``error`` rejects the row (naming it and its length). Under
            ``error`` the prompt and response limits reject rows too instead of cutting them.
        rewritten_turns: What to do with a conversation whose chat template renders an assistant turn
            differently once later messages follow (Qwen3 drops earlier ``<think>`` blocks). A turn is
            always trained on the text the template gives it as the last message, which is what the
            model writes at inference. ``split`` (default) makes the conversation several rows: the
            whole conversation, training the turns it renders unchanged, plus one row ending with each
            other turn (history repeated: the split summary counts the extra rows and tokens).
            ``error`` refuses such a conversation.
        strict_template: Refuse (instead of keeping and counting) a row whose rendering lacks content
            the data has: a tool call, reasoning or message content the chat template does not write.
    """

    max_length: int | None = 2048
    max_prompt_length: int | None = None
    max_response_length: int | None = None
    truncation: Truncation = "error"
    rewritten_turns: RewrittenTurns = "split"
    strict_template: bool = False

    def __post_init__(self) -> None:
        if self.truncation not in ("left", "right", "error"):
            raise ConfigError(f"truncation must be 'left', 'right' or 'error', got {self.truncation!r}")
        if self.rewritten_turns not in ("split", "error"):
            raise ConfigError(f"rewritten_turns must be 'split' or 'error', got {self.rewritten_turns!r}")
        for name in ("max_length", "max_prompt_length", "max_response_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive number of tokens or null, got {value}")


@dataclass
class TokenizedConversation:
    """Token ids and aligned labels of one conversation.

    Attributes:
        input_ids: Token ids after truncation.
        labels: ``input_ids`` where trained, ``IGNORE_INDEX`` elsewhere.
        original_length: Number of tokens before truncation.
        truncated: Whether any token was cut.
    """

    input_ids: list[int]
    labels: list[int]
    original_length: int
    truncated: bool

    @property
    def num_trained(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


def _labels_from_boundaries(
    encoding: Any, input_ids: list[int], spans: Sequence[tuple[int, int]]
) -> list[int] | None:
    """`label_tokens` for a Rust ``Encoding``, from the tokens at the span boundaries only (None: fall back)."""
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in spans:
        if end <= start:
            continue
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first is None or last is None:
            return None
        if encoding.token_to_chars(first)[0] < start:  # the token straddles the span's start: not trained
            first += 1
        labels[first : last + 1] = input_ids[first : last + 1]
    return labels


def label_tokens(
    input_ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> list[int]:
    """Labels for tokens: the id where the token starts inside a trained span, else ``IGNORE_INDEX``.

    Args:
        input_ids: Token ids of the rendered text.
        offsets: Each token's ``(start, end)`` characters in the text.
        spans: Sorted, disjoint ``(start, end)`` character spans that are trained.
    """
    if not spans or not len(input_ids):
        return [IGNORE_INDEX] * len(input_ids)
    starts = np.fromiter((offset[0] for offset in offsets), dtype=np.int64, count=len(input_ids))
    span_starts = np.fromiter((span[0] for span in spans), dtype=np.int64, count=len(spans))
    span_ends = np.fromiter((span[1] for span in spans), dtype=np.int64, count=len(spans))
    candidate = np.searchsorted(
        span_ends, starts, side="right"
    )  # the first span ending after the token starts
    inside = candidate < len(spans)
    inside[inside] = span_starts[candidate[inside]] <= starts[inside]
    return np.where(inside, np.asarray(input_ids, dtype=np.int64), IGNORE_INDEX).tolist()


def truncate(
    input_ids: list[int], labels: list[int], options: TokenizeOptions, field: str
) -> TokenizedConversation:
    """Apply the prompt, response and total length limits (see `TokenizeOptions`).

    Raises:
        InvalidRow: Under ``truncation="error"``, when a limit is exceeded (kind ``too_long``).
    """
    original_length = len(input_ids)
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    prompt_ids, prompt_labels = input_ids[:first], labels[:first]
    response_ids, response_labels = input_ids[first:], labels[first:]

    def too_long(what: str, length: int, limit: int) -> InvalidRow:
        return InvalidRow(
            field,
            f"{what} has {length} tokens, more than {limit}; raise the limit or set truncation to left/right",
            kind="too_long",
        )

    if options.max_prompt_length is not None and len(prompt_ids) > options.max_prompt_length:
        if options.truncation == "error":
            raise too_long("the prompt", len(prompt_ids), options.max_prompt_length)
        keep = options.max_prompt_length
        prompt_ids, prompt_labels = (
            prompt_ids[len(prompt_ids) - keep :],
            prompt_labels[len(prompt_labels) - keep :],
        )
    if options.max_response_length is not None and len(response_ids) > options.max_response_length:
        if options.truncation == "error":
            raise too_long("the response", len(response_ids), options.max_response_length)
        response_ids = response_ids[: options.max_response_length]
        response_labels = response_labels[: options.max_response_length]
    input_ids, labels = prompt_ids + response_ids, prompt_labels + response_labels
    if options.max_length is not None and len(input_ids) > options.max_length:
        if options.truncation == "error":
            raise too_long(
                f"the conversation (max_length={options.max_length})", len(input_ids), options.max_length
            )
        if options.truncation == "left":
            input_ids, labels = input_ids[-options.max_length :], labels[-options.max_length :]
        else:
            input_ids, labels = input_ids[: options.max_length], labels[: options.max_length]
    if labels:
        # Nothing precedes the first token, so it is never a target (the model shifts); left truncation
        # can cut into a response, and counting that label would skew the per-token normalisation.
        labels[0] = IGNORE_INDEX
    return TokenizedConversation(input_ids, labels, original_length, len(input_ids) < original_length)


def tokenize_rendered(
    tokenizer: PreTrainedTokenizerBase, rendered: Sequence[RenderedConversation]
) -> list[tuple[list[int], list[int]]]:
    """Tokenize rendered conversations in one batched call; return ``(input_ids, labels)`` for each."""
    if not rendered:
        return []
    texts = [item.text for item in rendered]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        # The Rust tokenizer directly: what ``tokenizer(texts)`` runs, without converting every encoding
        # into Python dictionaries, and asking only where the span boundaries fall instead of converting
        # every token's offsets (together, half of the preparation time on GSM8K).
        results = []
        for item, encoding in zip(
            rendered, backend.encode_batch(texts, add_special_tokens=False), strict=True
        ):
            input_ids = encoding.ids
            labels = _labels_from_boundaries(encoding, input_ids, item.trained_spans)
            if labels is None:  # a boundary inside text no token covers: use every offset
                labels = label_tokens(input_ids, encoding.offsets, item.trained_spans)
            results.append((input_ids, labels))
        return results
    else:
        batch = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        pairs = list(zip(batch["input_ids"], batch["offset_mapping"], strict=True))
    return [
        (list(input_ids), label_tokens(input_ids, offsets, item.trained_spans))
        for item, (input_ids, offsets) in zip(rendered, pairs, strict=True)
    ]
