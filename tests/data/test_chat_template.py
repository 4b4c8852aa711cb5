"""`DirectTemplate`: the chat template rendered without ``apply_chat_template``'s per-call cost, and exactly
as ``apply_chat_template`` renders it (the reference: transformers' own call, on the official templates)."""

from __future__ import annotations

import copy
from collections import UserString

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_sft.data import chat_template
from lit_sft.data.chat_template import CHECK_EVERY, DirectTemplate, TemplateMismatch
from lit_sft.data.conversation import FormatOptions, row_to_conversation
from lit_sft.data.render import ConversationRenderer
from lit_sft.errors import InvalidRow
from tests.data.test_real_templates import CONVERSATIONS, TOOLS
from tests.helpers import make_tokenizer
from tests.real_vocab import template

OFFICIAL = ("qwen2_5", "qwen3", "llama3", "llama3_1", "smollm2")


def tokenizer_with(name: str):
    tokenizer = make_tokenizer(
        "llama3" if name.startswith("llama3") else "qwen"
    )  # Llama's template needs a BOS
    tokenizer.chat_template = template(name)
    return tokenizer


def apply(tokenizer, messages, tools, generation_prompt, **kwargs):
    return tokenizer.apply_chat_template(
        copy.deepcopy(messages),
        tools=tools,
        tokenize=False,
        add_generation_prompt=generation_prompt,
        **kwargs,
    )


def every_prefix(messages):
    for count in range(1, len(messages) + 1):
        for generation_prompt in (False, True):
            yield messages[:count], generation_prompt


@pytest.mark.parametrize("name", OFFICIAL)
@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}])
def test_every_prefix_of_every_conversation_renders_as_apply_chat_template(name, kwargs) -> None:
    tokenizer = tokenizer_with(name)
    direct = DirectTemplate(tokenizer, kwargs)
    assert direct.enabled
    checked = 0
    for conversation, messages in CONVERSATIONS.items():
        tools = TOOLS if conversation == "tools" else None
        messages = row_to_conversation(
            {"messages": copy.deepcopy(messages)}, "messages", FormatOptions()
        ).messages
        if not direct.accepts(messages, tools):
            assert (
                conversation == "reasoning"
            )  # transformers may alias reasoning fields: its own call renders
            continue
        for prefix, generation_prompt in every_prefix(messages):
            try:
                expected = apply(tokenizer, prefix, tools, generation_prompt, **kwargs)
            except Exception as error:
                with pytest.raises(type(error)):
                    direct.render(prefix, tools, generation_prompt)
                continue
            assert direct.render(prefix, tools, generation_prompt) == expected
            checked += 1
    assert checked > 20


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
ARGUMENT = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
CALL = st.builds(
    lambda name, arguments: {"type": "function", "function": {"name": name, "arguments": arguments}},
    st.sampled_from(["get_weather", "search"]),
    st.dictionaries(st.sampled_from(["city", "q", "n"]), ARGUMENT, max_size=2),
)
MESSAGE = st.one_of(
    st.builds(lambda text: {"role": "user", "content": text}, TEXT),
    st.builds(lambda text: {"role": "system", "content": text}, TEXT),
    st.builds(lambda text: {"role": "tool", "content": text}, TEXT),
    st.builds(lambda text: {"role": "assistant", "content": text}, TEXT),
    st.builds(
        lambda text, calls: {"role": "assistant", "content": text, "tool_calls": calls},
        TEXT,
        st.lists(CALL, max_size=2),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(OFFICIAL),
    messages=st.lists(MESSAGE, min_size=1, max_size=5),
    with_tools=st.booleans(),
)
def test_generated_conversations_render_as_apply_chat_template(name, messages, with_tools) -> None:
    tokenizer = tokenizer_with(name)
    direct = DirectTemplate(tokenizer)
    tools = TOOLS if with_tools else None
    assert direct.accepts(messages, tools)
    for prefix, generation_prompt in every_prefix(messages):
        try:
            expected = apply(tokenizer, prefix, tools, generation_prompt)
        except Exception as error:  # the template refuses (roles out of order...): so must the direct way
            with pytest.raises(type(error), match=None):
                direct.render(prefix, tools, generation_prompt)
            continue
        assert direct.render(prefix, tools, generation_prompt) == expected


def test_a_template_that_raises_raises_as_apply_chat_template_does() -> None:
    tokenizer = make_tokenizer("gemma")  # its template refuses a system message
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(Exception) as expected:
        apply(tokenizer, messages, None, True)
    direct = DirectTemplate(tokenizer)
    with pytest.raises(type(expected.value), match="System role not supported"):
        direct.render(messages, None, True)
    renderer = ConversationRenderer(tokenizer)
    conversation = row_to_conversation(
        {"messages": [*messages, {"role": "assistant", "content": "Ok"}]}, "messages", FormatOptions()
    )
    with pytest.raises(
        InvalidRow, match=r"the chat template rejected the conversation: .*System role not supported"
    ):
        renderer.render(conversation)


@pytest.mark.parametrize(
    "messages, tools",
    [
        ([{"role": "user", "content": "Hi", "reasoning_content": "none"}], None),
        ([{"role": "user", "content": "Hi", "thinking": "none"}], None),
        ([{"role": "user", "content": "Hi", "name": None}], None),
        ([{"role": "user", "content": UserString("Hi")}], None),
        ([{"role": "user", "content": ("a", "b")}], None),
        ([{"role": "user", "content": [{"type": "image", "image": object()}]}], None),
        ([{"role": "user", "content": "Hi"}], [{"type": "function", "function": {1: "not a str key"}}]),
    ],
)
def test_what_transformers_would_change_before_rendering_is_left_to_apply_chat_template(
    messages, tools
) -> None:
    assert not DirectTemplate(make_tokenizer("qwen")).accepts(messages, tools)


def test_a_renderer_uses_the_direct_way_and_checks_it_every_so_many_renders(monkeypatch) -> None:
    tokenizer = make_tokenizer("qwen")
    renderer = ConversationRenderer(tokenizer)
    calls = []
    original = type(tokenizer).apply_chat_template

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "apply_chat_template", counting)
    rows = [
        {"messages": [{"role": "user", "content": f"{i}+1?"}, {"role": "assistant", "content": str(i + 1)}]}
        for i in range(300)
    ]
    for row in rows:
        renderer.render(row_to_conversation(row, "messages", FormatOptions()))
    renders = renderer.direct.renders
    assert renders == 600  # the whole conversation and its turn's generation prompt, for each row
    assert len(calls) == -(-renders // CHECK_EVERY)  # the first render, and every CHECK_EVERY-th


def test_a_direct_rendering_that_differs_is_an_error_not_a_different_mask(monkeypatch) -> None:
    tokenizer = make_tokenizer("qwen")
    renderer = ConversationRenderer(tokenizer)
    original = type(tokenizer).apply_chat_template
    monkeypatch.setattr(
        type(tokenizer), "apply_chat_template", lambda self, *a, **k: original(self, *a, **k) + " "
    )
    row = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}
    with pytest.raises(TemplateMismatch, match="differs from apply_chat_template"):
        renderer.render(row_to_conversation(row, "messages", FormatOptions()))


def test_a_transformers_that_prepares_messages_differently_turns_the_direct_way_off(monkeypatch) -> None:
    tokenizer = make_tokenizer("qwen")
    original = type(tokenizer).apply_chat_template
    monkeypatch.setattr(
        type(tokenizer), "apply_chat_template", lambda self, *a, **k: original(self, *a, **k).upper()
    )
    assert not DirectTemplate(tokenizer).enabled
    monkeypatch.setattr(chat_template, "PROBES", ())  # without probes nothing would tell
    assert DirectTemplate(tokenizer).enabled


def test_a_template_chosen_by_the_presence_of_tools_is_the_one_rendered() -> None:
    tokenizer = make_tokenizer("qwen")
    tokenizer.chat_template = {
        "default": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}",
        "tool_use": "TOOLS {{ tools | length }}\n{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}",
    }
    direct = DirectTemplate(tokenizer)
    messages = [{"role": "user", "content": "Hi"}]
    for tools in (None, TOOLS, []):
        assert direct.render(messages, tools, False) == apply(tokenizer, messages, tools, False)
