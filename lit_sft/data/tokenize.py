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
from lit_sft.data.template_fidelity import lost_content
from lit_sft.errors import ConfigError, InvalidRow

Truncation = Literal["left", "right", "error"]
RewrittenTurns = Literal["split", "error"]


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
class RenderedConversation:
    """A conversation rendered to text, with the character spans that are trained."""

    text: str
    trained_spans: list[tuple[int, int]]
    #: Fields of the conversation whose content the rendering lacks (comma-separated; "" for none).
    lost: str = ""


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

    Each trained assistant turn is trained on the text its template renders for it when it is the last
    message, that is after the history it follows and the generation prompt: exactly what the model writes
    at inference. Most templates render a turn the same way whatever follows it, and a conversation is one
    row. Some rewrite history: Qwen3 drops the ``<think>`` block of assistant turns before the last user
    message, and writes one only for the last turn when it has no reasoning. Under
    ``rewritten_turns="split"`` such a conversation becomes several rows, each ending with the turns
    that are rendered in it as at inference (see `TokenizeOptions`); under ``"error"`` it is refused.

    Args:
        tokenizer: The model's tokenizer, with its chat template.
        template_kwargs: Extra variables for the template (e.g. ``enable_thinking``).
        rewritten_turns: ``split`` or ``error`` (see `TokenizeOptions`).
        strict_template: Refuse a conversation whose rendering lacks content of its messages.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template_kwargs: dict[str, Any] | None = None,
        rewritten_turns: RewrittenTurns = "split",
        strict_template: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        self.end_of_turn = end_of_turn_pattern(tokenizer)
        self.rewritten_turns = rewritten_turns
        self.strict_template = strict_template

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
        """Render a conversation as one row (see `render_rows`).

        Raises:
            InvalidRow: As `render_rows`, and when the conversation needs more than one row.
        """
        return self._rows(conversation, split=False)[0]

    def render_rows(self, conversation: Conversation) -> list[RenderedConversation]:
        """Render a conversation and find the character spans of its trained assistant turns.

        Returns:
            One row, or (for a template that rewrites history, under ``rewritten_turns="split"``) several:
            the whole conversation, training the turns it renders as at inference, then for each turn it
            does not, the conversation up to that turn, in conversation order.

        Raises:
            InvalidRow: When the template rejects the conversation; when the generation prompt is not how
                the template starts an assistant turn; under ``rewritten_turns="error"``, when a turn is
                rendered differently once later messages follow; under ``strict_template``, when the
                rendering lacks content of the conversation (kind ``template_dropped_content``).
        """
        return self._rows(conversation, split=self.rewritten_turns == "split")

    def _rows(self, conversation: Conversation, split: bool) -> list[RenderedConversation]:
        messages = conversation.messages
        turns = [index for index, trained in enumerate(conversation.trained) if trained]
        if turns and turns[0] == 0:
            raise InvalidRow(
                f"{conversation.field}[0]",
                "the conversation starts with an assistant message; it needs a user (or system) message first",
                kind="invalid_messages",
            )
        full = self._render(conversation, len(messages), add_generation_prompt=False)
        before = {index: self._render(conversation, index, add_generation_prompt=True) for index in turns}
        through = {
            index: full if index + 1 == len(messages) else self._render(conversation, index + 1, False)
            for index in turns
        }
        for index in turns:
            if not through[index].startswith(before[index]):
                raise InvalidRow(
                    f"{conversation.field}[{index}]",
                    "the chat template does not start this assistant turn with its generation prompt (the "
                    "conversation up to the turn rendered with add_generation_prompt is not a prefix of the "
                    "conversation through the turn), so the tokens the model writes cannot be located; give "
                    "a template whose generation prompt opens every assistant turn (model.chat_template)",
                    kind="template_generation_prompt",
                )
        lost = lost_content(conversation, full, before, through)
        if lost and self.strict_template:
            field, what = lost[0]
            raise InvalidRow(
                field,
                f"the chat template does not render {what}; with data.strict_template=false the row is "
                "kept and counted",
                kind="template_dropped_content",
            )
        rows: list[tuple[str, list[int]]] = []
        pending, text = list(turns), full
        while True:
            taken, cursor = [], 0
            for index in pending:
                if text.startswith(through[index]) and len(before[index]) >= cursor:
                    taken.append(index)
                    cursor = len(through[index])
            rows.append((text, taken))
            pending = [index for index in pending if index not in taken]
            if not pending:
                break
            if not split:
                raise _not_prefix_stable(conversation.field, pending[0])
            text = through[pending[-1]]  # the conversation up to the last turn not yet trained
        # The whole conversation is a row only if it trains a turn (it may not: [user, assistant, user]).
        rows = [row for row in rows if row[1]] or rows[:1]
        rows.sort(key=lambda row: row[1][-1] if row[1] else len(messages))
        rendered = [self._assemble(text, taken, before, through) for text, taken in rows]
        rendered[0].lost = ", ".join(field for field, _ in lost)
        return rendered

    def _assemble(
        self, full: str, turns: list[int], before: dict[int, str], through: dict[int, str]
    ) -> RenderedConversation:
        """One row: ``full`` with the given turns' trained spans (and EOS where a template writes none)."""
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        cursor = 0  # characters of `full` consumed so far
        length = 0  # characters of the output text so far (differs from cursor once EOS is appended)
        for index in turns:
            start, end = len(before[index]), len(through[index])
            trained_text, tail = self._split_end_of_turn(full[start:end])
            pieces.append(full[cursor:start])
            length += start - cursor
            pieces.append(trained_text)
            spans.append((length, length + len(trained_text)))
            length += len(trained_text)
            pieces.append(tail)
            length += len(tail)
            cursor = end
        pieces.append(full[cursor:])
        return RenderedConversation(text="".join(pieces), trained_spans=spans)


def _not_prefix_stable(field: str, index: int) -> InvalidRow:
    return InvalidRow(
        f"{field}[{index}]",
        "the chat template renders this assistant turn differently when later messages follow (it rewrites "
        "history, as Qwen3 does with <think> blocks), so it cannot be trained in the same row as them; set "
        "data.rewritten_turns=split (the default) to train it in a row that ends with it",
        kind="template_not_prefix_stable",
    )


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
