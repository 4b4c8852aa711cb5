from __future__ import annotations

import json

import pytest

from lit_sft.data.conversation import Conversation, FormatOptions, row_to_conversation
from lit_sft.data.render import ConversationRenderer
from lit_sft.data.tokenize import (
    IGNORE_INDEX,
    TokenizeOptions,
    label_tokens,
    tokenize_rendered,
    truncate,
)
from lit_sft.errors import ConfigError, InvalidRow
from tests.helpers import FAMILIES, make_tokenizer

SINGLE_TURN = [
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "2+3 = 5\n#### 5"},
]
MULTI_TURN = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Add 7 and 8."},
    {"role": "assistant", "content": "7+8 = 15"},
]


def encode(tokenizer, conversation: Conversation) -> tuple[list[int], list[int]]:
    rendered = ConversationRenderer(tokenizer).render(conversation)
    [(input_ids, labels)] = tokenize_rendered(tokenizer, [rendered])
    return input_ids, labels


def conversation_of(messages: list[dict], turns: str = "all") -> Conversation:
    return row_to_conversation({"messages": messages}, "messages", FormatOptions(assistant_turns=turns))


def trained_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(input_ids, labels, strict=True))
    return tokenizer.decode([label for label in labels if label != IGNORE_INDEX])


@pytest.mark.parametrize("messages", [SINGLE_TURN, MULTI_TURN], ids=["single", "multi"])
def test_trained_tokens_are_exactly_assistant_contents_and_end_of_turn(
    family: str, tokenizer, messages
) -> None:
    input_ids, labels = encode(tokenizer, conversation_of(messages))
    end = FAMILIES[family]["end_of_turn"]
    expected = "".join(m["content"] + end for m in messages if m["role"] == "assistant")
    assert trained_text(tokenizer, input_ids, labels) == expected
    # The ids are exactly the template's own tokenization: what the model sees at inference.
    assert input_ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)


def test_last_turn_only(family: str, tokenizer) -> None:
    input_ids, labels = encode(tokenizer, conversation_of(MULTI_TURN, turns="last"))
    assert trained_text(tokenizer, input_ids, labels) == "7+8 = 15" + FAMILIES[family]["end_of_turn"]


def test_generation_header_is_not_trained_and_the_last_prompt_token_is_masked(family: str, tokenizer) -> None:
    """verl issue 3562: the last prompt token trained and EOS not."""
    input_ids, labels = encode(tokenizer, conversation_of(SINGLE_TURN))
    prompt = tokenizer.apply_chat_template(
        SINGLE_TURN[:1], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert input_ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in labels[: len(prompt)])
    assert labels[len(prompt)] != IGNORE_INDEX
    end_id = tokenizer.convert_tokens_to_ids(FAMILIES[family]["end_of_turn"])
    last_trained = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert labels[last_trained] == end_id


@pytest.mark.parametrize("family", ["llama3", "gemma"])
def test_bos_from_the_template_is_not_doubled(family: str) -> None:
    tokenizer = make_tokenizer(family)
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id  # the tokenizer would add one
    input_ids, _ = encode(tokenizer, conversation_of(SINGLE_TURN))
    assert input_ids[0] == tokenizer.bos_token_id
    assert input_ids.count(tokenizer.bos_token_id) == 1


def test_qwen_implicit_system_prompt_is_rendered_but_not_trained() -> None:
    tokenizer = make_tokenizer("qwen")
    input_ids, labels = encode(tokenizer, conversation_of(SINGLE_TURN))
    assert tokenizer.decode(input_ids).startswith("<|im_start|>system\nYou are Qwen")
    assert trained_text(tokenizer, input_ids, labels) == "2+3 = 5\n#### 5<|im_end|>"


def test_gemma_rejects_a_system_message_with_the_templates_reason() -> None:
    tokenizer = make_tokenizer("gemma")
    conversation = conversation_of([{"role": "system", "content": "Be brief."}, *SINGLE_TURN])
    with pytest.raises(InvalidRow, match="System role not supported") as error:
        ConversationRenderer(tokenizer).render(conversation)
    assert error.value.kind == "template_error"


def test_tool_calls_are_trained_and_tool_results_are_not() -> None:
    tokenizer = make_tokenizer("qwen")
    arguments = {"a": 2, "b": 3}
    messages = [
        {"role": "user", "content": "Add 2 and 3."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": arguments}}],
        },
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "The sum is 5."},
    ]
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    row = {"messages": messages, "tools": json.dumps(tools)}
    conversation = row_to_conversation(row, "messages", FormatOptions())
    input_ids, labels = encode(tokenizer, conversation)
    text = tokenizer.decode(input_ids)
    assert "# Tools" in text and "<tool_response>\n5\n</tool_response>" in text
    call = '<tool_call>\n{"name": "add", "arguments": ' + json.dumps(arguments) + "}\n</tool_call><|im_end|>"
    assert trained_text(tokenizer, input_ids, labels) == call + "The sum is 5.<|im_end|>"


def test_eos_is_appended_and_trained_when_the_template_has_no_end_of_turn_token() -> None:
    tokenizer = make_tokenizer("qwen")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    input_ids, labels = encode(tokenizer, conversation_of(SINGLE_TURN))
    assert trained_text(tokenizer, input_ids, labels) == "2+3 = 5\n#### 5\n<|im_end|>"
    assert input_ids[-1] == tokenizer.eos_token_id


def test_a_template_that_is_not_prefix_stable_is_an_error_not_a_wrong_mask() -> None:
    """Qwen3-style templates drop the reasoning of earlier assistant turns."""
    tokenizer = make_tokenizer("qwen")
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}"
        "{{ '<|im_start|>assistant\\n' + m.content.split('</think>')[-1] + '<|im_end|>\\n' }}"
        "{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    messages = [dict(m) for m in MULTI_TURN]
    messages[1]["content"] = "<think>greet</think>Hello!"
    with pytest.raises(InvalidRow, match="renders this assistant turn differently") as error:
        encode(tokenizer, conversation_of(messages))
    assert error.value.field == "messages[1]"
    assert error.value.kind == "template_not_prefix_stable"
    # Training the last turn only is consistent, and works.
    input_ids, labels = encode(tokenizer, conversation_of(messages, turns="last"))
    assert trained_text(tokenizer, input_ids, labels) == "7+8 = 15<|im_end|>"


def test_a_conversation_starting_with_the_assistant_is_rejected() -> None:
    tokenizer = make_tokenizer("qwen")
    conversation = conversation_of([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(InvalidRow, match="starts with an assistant message"):
        encode(tokenizer, conversation)


def test_label_tokens_trains_tokens_that_start_inside_a_span() -> None:
    offsets = [(0, 2), (2, 4), (4, 5), (5, 8), (8, 9)]
    labels = label_tokens([10, 11, 12, 13, 14], offsets, [(3, 5), (8, 9)])
    # (2, 4) starts before the span: not trained; (4, 5) starts inside it: trained.
    assert labels == [IGNORE_INDEX, IGNORE_INDEX, 12, IGNORE_INDEX, 14]


IDS = list(range(1, 11))
LABELS = [IGNORE_INDEX] * 4 + IDS[4:]  # a 4-token prompt and a 6-token response


@pytest.mark.parametrize(
    ("options", "expected_ids", "expected_trained"),
    [
        (TokenizeOptions(max_length=8, truncation="left"), IDS[2:], 6),
        (TokenizeOptions(max_length=8, truncation="right"), IDS[:8], 4),
        (TokenizeOptions(max_length=4, truncation="right"), IDS[:4], 0),
        # Left truncation into the response: the first kept token is never a target (nothing precedes it).
        (TokenizeOptions(max_length=4, truncation="left"), IDS[6:], 3),
        (TokenizeOptions(max_length=None, max_prompt_length=2, truncation="left"), IDS[2:], 6),
        (TokenizeOptions(max_length=None, max_prompt_length=2, truncation="right"), IDS[2:], 6),
        (TokenizeOptions(max_length=None, max_response_length=3, truncation="left"), IDS[:7], 3),
        (TokenizeOptions(max_length=10, truncation="error"), IDS, 6),
    ],
)
def test_truncation(options: TokenizeOptions, expected_ids: list[int], expected_trained: int) -> None:
    result = truncate(list(IDS), list(LABELS), options, "messages")
    assert result.input_ids == expected_ids
    assert result.num_trained == expected_trained
    assert result.truncated == (len(expected_ids) < len(IDS))
    assert result.original_length == 10
    # Labels stay aligned with the ids they came with.
    assert all(
        label in (IGNORE_INDEX, token) for token, label in zip(result.input_ids, result.labels, strict=True)
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (TokenizeOptions(max_length=8), "the conversation \\(max_length=8\\) has 10 tokens, more than 8"),
        (TokenizeOptions(max_prompt_length=3), "the prompt has 4 tokens, more than 3"),
        (TokenizeOptions(max_response_length=5), "the response has 6 tokens, more than 5"),
    ],
)
def test_truncation_error_names_the_length(options: TokenizeOptions, message: str) -> None:
    with pytest.raises(InvalidRow, match=message) as error:
        truncate(list(IDS), list(LABELS), options, "question")
    assert error.value.kind == "too_long"
    assert error.value.field == "question"


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="truncation must be"):
        TokenizeOptions(truncation="middle")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_length must be a positive"):
        TokenizeOptions(max_length=0)


def test_boundary_labels_equal_per_token_offset_labels_with_a_bpe_tokenizer(gsm8k_dir) -> None:
    """The fast path (span boundaries only) labels exactly like the per-token offset rule."""
    import os

    from lit_sft.data.tokenize import _labels_from_boundaries
    from tests.helpers import make_bpe_tokenizer

    with open(os.path.join(gsm8k_dir, "test.jsonl"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][:300]
    tokenizer = make_bpe_tokenizer([r["question"] + " " + r["answer"] for r in rows])
    renderer = ConversationRenderer(tokenizer)
    options = FormatOptions(prompt_key="question", response_key="answer")
    compared = 0
    for row in rows:
        rendered = renderer.render(row_to_conversation(row, "prompt_response", options))
        encoding = tokenizer.backend_tokenizer.encode(rendered.text, add_special_tokens=False)
        fast = _labels_from_boundaries(encoding, encoding.ids, rendered.trained_spans)
        assert fast == label_tokens(encoding.ids, encoding.offsets, rendered.trained_spans)
        [(input_ids, labels)] = tokenize_rendered(tokenizer, [rendered])
        assert (input_ids, labels) == (encoding.ids, fast)
        compared += 1
    assert compared == 300
