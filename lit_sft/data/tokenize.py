"""Conversations to token ids and labels: the model-specific half of the data path.

The conversation is rendered once with the model's own chat template. The characters each trained
assistant turn occupies are found by rendering prefixes of the conversation (up to the turn's
generation prompt, and through the turn) and checking that each prefix really is a prefix of the whole;
a template for which that fails gets an error naming the row, never a silent wrong mask. The whole text
is then tokenized once, exactly as ``apply_chat_template(tokenize=True)`` would (so the prompt tokens are
the ones the model sees at inference), and a token is trained when it starts inside a trained span.

A trained span is the assistant's content and its end-of-turn token (``<|im_end|>``, ``<|eot_id|>``,
``<end_of_turn>``...), not the header the generation prompt emits and not the newline some templates
write after the end-of-turn token. When a template writes no end-of-turn token at all, EOS is appended
to the turn and trained, so that the model learns to stop.

Labels follow the Hugging Face convention: aligned with ``input_ids`` (the model shifts), ``-100``
exactly where a token is not a target.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
from transformers import PreTrainedTokenizerBase

from lit_sft.batch import IGNORE_INDEX
from lit_sft.data.conversation import Conversation
from lit_sft.errors import ConfigError, InvalidRow

Truncation = Literal["left", "right", "error"]


@dataclass(frozen=True)
class TokenizeOptions:
    """Sequence limits.

    Args:
        max_length: Longest sequence in tokens (prompt and response together); None for no limit.
        max_prompt_length: Longest prompt (the tokens before the first trained token); a longer prompt
            loses its oldest tokens (its left end). None for no limit.
        max_response_length: Longest response (from the first trained token on); a longer response
            loses its end. None for no limit.
        truncation: What to do with a sequence over ``max_length``: ``left`` keeps its last tokens,
            ``right`` keeps its first tokens, ``error`` rejects the row (naming it and its length). Under
            ``error`` the prompt and response limits reject rows too instead of cutting them.
    """

    max_length: int | None = 2048
    max_prompt_length: int | None = None
    max_response_length: int | None = None
    truncation: Truncation = "error"

    def __post_init__(self) -> None:
        if self.truncation not in ("left", "right", "error"):
            raise ConfigError(f"truncation must be 'left', 'right' or 'error', got {self.truncation!r}")
        for name in ("max_length", "max_prompt_length", "max_response_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive number of tokens or null, got {value}")


@dataclass
class RenderedConversation:
    """A conversation rendered to text, with the character spans that are trained."""

    text: str
    trained_spans: list[tuple[int, int]]


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


def end_of_turn_pattern(tokenizer: PreTrainedTokenizerBase) -> re.Pattern:
    """A regex matching the special tokens the tokenizer's chat template writes, and EOS.

    The last of these inside an assistant turn closes it (``<|im_end|>``, ``<|eot_id|>``...). Only
    tokens that appear in the template are considered, as transformers does for control tokens.
    """
    template = tokenizer.chat_template or ""
    specials = {str(token) for token in tokenizer.all_special_tokens}
    specials.update(str(token) for token in tokenizer.added_tokens_decoder.values() if token.special)
    markers = {token for token in specials if token and token in template}
    if tokenizer.eos_token:
        markers.add(tokenizer.eos_token)
    if not markers:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(re.escape(token) for token in sorted(markers, key=len, reverse=True)))


class ConversationRenderer:
    """Renders conversations with a tokenizer's chat template and locates the trained spans.

    Args:
        tokenizer: The model's tokenizer, with its chat template.
        template_kwargs: Extra variables for the template (e.g. ``enable_thinking``).
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, template_kwargs: dict[str, Any] | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        self.end_of_turn = end_of_turn_pattern(tokenizer)

    def _render(self, conversation: Conversation, count: int, add_generation_prompt: bool) -> str:
        try:
            # tokenize=False renders one conversation to one string.
            return cast(
                str,
                self.tokenizer.apply_chat_template(
                    conversation.messages[:count],
                    # transformers types the parameter as a list (invariant) of dicts or callables.
                    tools=conversation.tools,  # type: ignore[arg-type]
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                    **self.template_kwargs,
                ),
            )
        except Exception as error:  # jinja's TemplateError, or whatever a template trips on
            reason = f"the chat template rejected the conversation: {type(error).__name__}: {error}"
            raise InvalidRow(conversation.field, reason, kind="template_error") from None

    def _split_end_of_turn(self, turn: str) -> tuple[str, str]:
        """Split an assistant turn into its trained part (content + end-of-turn) and untrained tail."""
        matches = list(self.end_of_turn.finditer(turn))
        if not matches:
            return turn + (self.tokenizer.eos_token or ""), ""
        end = matches[-1].end()
        return turn[:end], turn[end:]

    def render(self, conversation: Conversation) -> RenderedConversation:
        """Render a conversation and find the character spans of its trained assistant turns.

        Raises:
            InvalidRow: When the template rejects the conversation, or rendering a prefix of the
                conversation does not give a prefix of the whole rendering (the template renders a
                turn differently depending on what follows it), which would make the mask wrong.
        """
        messages = conversation.messages
        full = self._render(conversation, len(messages), add_generation_prompt=False)
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        cursor = 0  # characters of `full` consumed so far
        length = 0  # characters of the output text so far (differs from cursor once EOS is appended)
        for index, trained in enumerate(conversation.trained):
            if not trained:
                continue
            if index == 0:
                raise InvalidRow(
                    f"{conversation.field}[0]",
                    "the conversation starts with an assistant message; it needs a user (or system) message first",
                    kind="invalid_messages",
                )
            before = self._render(conversation, index, add_generation_prompt=True)
            last = index + 1 == len(messages)
            through = full if last else self._render(conversation, index + 1, add_generation_prompt=False)
            if not (through.startswith(before) and full.startswith(through) and len(before) >= cursor):
                raise InvalidRow(
                    f"{conversation.field}[{index}]",
                    "the chat template renders this assistant turn differently when later messages follow "
                    "(a prefix of the conversation does not render to a prefix of the whole), so the trained "
                    "tokens cannot be located",
                    kind="template_not_prefix_stable",
                )
            trained_text, tail = self._split_end_of_turn(through[len(before) :])
            pieces.append(full[cursor : len(before)])
            length += len(before) - cursor
            pieces.append(trained_text)
            spans.append((length, length + len(trained_text)))
            length += len(trained_text)
            pieces.append(tail)
            length += len(tail)
            cursor = len(through)
        pieces.append(full[cursor:])
        return RenderedConversation(text="".join(pieces), trained_spans=spans)


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
