"""Template fidelity: which parts of a conversation a chat template does not render.

Some templates drop content silently (the reasoning of earlier turns, for one);
`lit_sft.data.render.ConversationRenderer` records each such field on the row, and the split summary
counts them (``SplitSummary.template_losses``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from lit_sft.data.conversation import Conversation


def lost_content(
    conversation: Conversation, full: str, before: dict[int, str], through: dict[int, str]
) -> list[tuple[str, str]]:
    """``(field, what)`` for each piece of a message the rendering does not show.

    A trained turn is looked for in its own rendered text (as at inference), any other message in the
    whole rendering. Whitespace is ignored: templates trim content and lay JSON out their own way.
    """
    whole = _Text(full)
    lost = []
    for index, message in enumerate(conversation.messages):
        where = f"{conversation.field}[{index}]"
        trained = index in before
        rendered = _Text(through[index][len(before[index]) :]) if trained else whole
        content = message.get("content")
        # Most content appears verbatim: only what does not is looked for with whitespace squashed.
        shown = not isinstance(content, str) or not content.strip() or content in rendered.raw
        if not shown and not _shown(content, rendered.squashed):
            lost.append((f"{where}.content", f"the content of {message['role']} message {index}"))
        if not message.get("tool_calls") and not (trained and message.get("reasoning_content")):
            continue
        text = rendered.squashed
        reasoning = message.get("reasoning_content")
        if trained and isinstance(reasoning, str) and reasoning.strip() and not _shown(reasoning, text):
            lost.append((f"{where}.reasoning_content", f"the reasoning_content of message {index}"))
        for position, call in enumerate(message.get("tool_calls") or []):
            if not _call_rendered(call, text):
                lost.append((f"{where}.tool_calls[{position}]", f"tool call {position} of message {index}"))
    return lost


class _Text:
    """A rendering, and (computed once, when first needed) the same with its whitespace removed."""

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self._squashed: str | None = None

    @property
    def squashed(self) -> str:
        if self._squashed is None:
            self._squashed = _squash(self.raw)
        return self._squashed


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _shown(value: Any, text: str) -> bool:
    """Whether ``value`` appears in ``text`` (squashed): as itself, or as JSON (Llama 3.1 ``tojson``s strings)."""
    forms = {_squash(json.dumps(value, ensure_ascii=False)), _squash(json.dumps(value))}
    if isinstance(value, str):
        forms.add(_squash(value))
    return any(form in text for form in forms)


def _call_rendered(call: Any, text: str) -> bool:
    """Whether a tool call's name, argument names and argument values all appear in ``text`` (squashed)."""
    function = call.get("function", call) if isinstance(call, dict) else {}
    if not isinstance(function, dict):
        return True
    name = function.get("name")
    if isinstance(name, str) and name and _squash(name) not in text:
        return False
    arguments = function.get("arguments")
    if not isinstance(arguments, dict):
        return not isinstance(arguments, str) or _shown(arguments, text)
    return all(_squash(str(key)) in text and _shown(value, text) for key, value in arguments.items())
