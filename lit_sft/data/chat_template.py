"""A chat template rendered as ``apply_chat_template(tokenize=False)`` renders it, without its per-call cost.

Why this exists: exact assistant masks render every conversation about twice per trained turn
(`lit_sft.data.render`), and ``apply_chat_template`` spends about 40% of each call outside the template:
it looks the template up, rebuilds the special-tokens map, and copies every message into plain types.
`DirectTemplate` calls the same compiled template (transformers' own, from its cache) with the same
variables, prepared once per renderer and once per conversation instead of once per render.

It renders only where it provably agrees, and says so otherwise (``None``: use ``apply_chat_template``):

* messages, tools and variables of plain JSON types only (transformers turns anything else into a
  placeholder), and no reasoning field (``reasoning_content``, ``thinking``, ``reasoning``: some versions
  alias them into each other);
* a template for which both ways render the same probe conversations (checked when it is built: any
  transformers version whose preparation changes what a template sees turns the direct way off);
* every ``CHECK_EVERY``-th render, and the first, compared with ``apply_chat_template``: a difference is
  an error (`TemplateMismatch`), never a silently different mask.

A template that raises is rendered again by ``apply_chat_template``, so errors read as transformers' own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, cast

import transformers
from transformers import PreTrainedTokenizerBase

#: Every this many renders (and the first), the direct result is compared with ``apply_chat_template``'s.
CHECK_EVERY = 256
#: Message fields transformers may copy into each other before rendering (5.x ``_alias_reasoning_fields``).
REASONING_FIELDS = frozenset({"reasoning_content", "thinking", "reasoning"})
_PLAIN_SCALARS = (str, int, float, bool)

_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city."}},
            "required": ["city"],
        },
    },
}
#: Conversations both ways must render alike (each prefix, with and without the generation prompt).
PROBES: tuple[tuple[list[dict[str, Any]], list[dict[str, Any]] | None], ...] = (
    (
        [
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "2 + 3 = 5.\n#### 5"},
        ],
        None,
    ),
    (
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": " Goodbye. "},
        ],
        None,
    ),
    (
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": '{"celsius": 21}', "name": "get_weather"},
            {"role": "assistant", "content": "21 degrees."},
        ],
        [_WEATHER_TOOL],
    ),
)


class TemplateMismatch(RuntimeError):
    """The direct rendering differed from ``apply_chat_template``'s: a bug to report, never a wrong mask."""


def is_plain(value: Any) -> bool:
    """Whether ``value`` holds only JSON types (exact str, int, float, bool, None, lists, str-keyed dicts):
    what transformers passes to a template unchanged."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if item is None or kind in _PLAIN_SCALARS:
            continue
        if kind is list:
            stack.extend(item)
        elif kind is dict:
            if any(type(key) is not str for key in item):
                return False
            stack.extend(item.values())
        else:
            return False
    return True


class DirectTemplate:
    """A tokenizer's chat template, rendered directly where that provably equals ``apply_chat_template``.

    Args:
        tokenizer: The tokenizer whose template (and special tokens) render.
        template_kwargs: Extra template variables, as given to ``apply_chat_template``.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template_kwargs: Mapping[str, Any] | None = None):
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        self.renders = 0
        self._compiled: dict[bool, Any] = {}  # by whether tools are given (a template may be chosen by it)
        self._variables: dict[str, Any] = {}
        self.enabled = self._prepare() and all(self._agrees(*probe) for probe in PROBES)

    def _prepare(self) -> bool:
        try:  # transformers' compiled, cached template: the one apply_chat_template renders with
            from transformers.utils.chat_template_utils import _compile_jinja_template
        except ImportError:
            return False
        self._compile = _compile_jinja_template
        variables = {**self.tokenizer.special_tokens_map, **self.template_kwargs}
        reserved = {"messages", "tools", "documents", "add_generation_prompt"}
        if not is_plain(variables) or reserved & variables.keys():
            return False
        self._variables = variables
        return True

    def _template(self, with_tools: bool) -> Any:
        if with_tools not in self._compiled:
            tools = [_WEATHER_TOOL] if with_tools else None  # only whether there are tools picks a template
            self._compiled[with_tools] = self._compile(self.tokenizer.get_chat_template(None, tools))
        return self._compiled[with_tools]

    def _agrees(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> bool:
        """Whether both ways render every prefix of a probe alike (or both refuse it)."""
        for count in range(1, len(messages) + 1):
            for generation_prompt in (False, True):
                prefix = messages[:count]
                kwargs = self.template_kwargs
                expected = _outcome(
                    partial(apply_template, self.tokenizer, prefix, tools, generation_prompt, kwargs)
                )
                found = _outcome(partial(self._direct, prefix, tools, generation_prompt))
                if isinstance(expected, Exception) != isinstance(found, Exception):
                    return False
                if not isinstance(expected, Exception) and expected != found:
                    return False
        return True

    def _direct(
        self, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None, gen: bool
    ) -> str:
        return cast(
            str,
            self._template(tools is not None).render(
                messages=messages, tools=tools, documents=None, add_generation_prompt=gen, **self._variables
            ),
        )

    def accepts(self, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None) -> bool:
        """Whether this conversation renders directly (check once per conversation, not per render)."""
        return (
            self.enabled
            and all(
                None not in message.values() and not REASONING_FIELDS & message.keys() for message in messages
            )
            and is_plain(list(messages))
            and is_plain(tools)
        )

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool,
    ) -> str:
        """The rendered text of a conversation `accepts` took, as ``apply_chat_template`` renders it.

        Raises:
            TemplateMismatch: When a checked render differs from ``apply_chat_template``'s.
            Exception: Whatever ``apply_chat_template`` raises for a conversation the template rejects.
        """
        try:
            text = self._direct(messages, tools, add_generation_prompt)
        except Exception:  # rendered again, so that the error is transformers' own
            return apply_template(
                self.tokenizer, list(messages), tools, add_generation_prompt, self.template_kwargs
            )
        self.renders += 1
        if self.renders % CHECK_EVERY == 1:
            expected = apply_template(
                self.tokenizer, list(messages), tools, add_generation_prompt, self.template_kwargs
            )
            if expected != text:
                raise TemplateMismatch(
                    "lit_sft's direct chat-template rendering differs from apply_chat_template's for a "
                    f"conversation of {len(messages)} messages (transformers {transformers.__version__}); "
                    "please report it with the row"
                )
        return text


def apply_template(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Any],
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
    template_kwargs: Mapping[str, Any],
) -> str:
    """``apply_chat_template(tokenize=False)``: one conversation to one string, the reference rendering."""
    # transformers types tools as an invariant list of dicts or callables.
    return cast(
        str,
        tokenizer.apply_chat_template(
            messages,
            tools=tools,  # type: ignore[arg-type]
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        ),
    )


def _outcome(render: Callable[[], str]) -> str | Exception:
    """What a rendering gives: its text, or what it raised (a probe a template refuses, both ways must)."""
    try:
        return render()
    except Exception as error:  # a template's raise_exception, or a type it trips on
        return error
