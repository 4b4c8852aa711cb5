"""Conversations to text with the model's own chat template, and the character spans that are trained.

The characters each trained assistant turn occupies are found by rendering prefixes of the conversation
(up to the turn's generation prompt, and through the turn) and checking that each prefix really is a
prefix of the whole; a template for which that fails gets an error naming the row, never a silent wrong
mask (or, with ``rewritten_turns="split"``, the conversation becomes several rows). `lit_sft.data.tokenize`
turns the text and spans into token ids and labels.

A trained span is the assistant's content and its end-of-turn token (``<|im_end|>``, ``<|eot_id|>``,
``<end_of_turn>``...), not the header the generation prompt emits and not the newline some templates
write after the end-of-turn token. When a template writes no end-of-turn token at all, EOS is appended
to the turn and trained, so that the model learns to stop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from lit_sft.data.chat_template import DirectTemplate, TemplateMismatch, apply_template
from lit_sft.data.conversation import Conversation
from lit_sft.data.template_fidelity import lost_content
from lit_sft.errors import InvalidRow

RewrittenTurns = Literal["split", "error"]


@dataclass
class RenderedConversation:
    """A conversation rendered to text, with the character spans that are trained."""

    text: str
    trained_spans: list[tuple[int, int]]
    #: Fields of the conversation whose content the rendering lacks (comma-separated; "" for none).
    lost: str = ""


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
        self.direct = DirectTemplate(tokenizer, self.template_kwargs)

    def _render(
        self, conversation: Conversation, count: int, add_generation_prompt: bool, direct: bool
    ) -> str:
        """The conversation's first ``count`` messages rendered; ``direct``: through `DirectTemplate`."""
        messages, tools = conversation.messages[:count], conversation.tools
        try:
            if direct:
                return self.direct.render(messages, tools, add_generation_prompt)
            return apply_template(
                self.tokenizer, messages, tools, add_generation_prompt, self.template_kwargs
            )
        except TemplateMismatch:
            raise
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
        direct = self.direct.accepts(messages, conversation.tools)  # once, not for each of the renders
        full = self._render(conversation, len(messages), False, direct)
        before = {index: self._render(conversation, index, True, direct) for index in turns}
        through = {
            index: full
            if index + 1 == len(messages)
            else self._render(conversation, index + 1, False, direct)
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
