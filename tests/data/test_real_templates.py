"""Masks on real vocabularies and official chat templates, against an independent reference.

The reference is transformers' ``return_assistant_tokens_mask`` on generation-marked copies of the
templates (``tests/fixtures/templates/*_marked.jinja``, Llama 3's from TRL), rendered for each assistant
turn as the last message, as at inference. The rule under test: every assistant turn is trained on exactly
the tokens the model writes after the generation prompt, in the context it has at inference, once.
"""

from __future__ import annotations

import copy
import json
import unicodedata

import pytest

from lit_sft.data.conversation import FormatOptions, row_to_conversation
from lit_sft.data.datamodule import SFTDataModule
from lit_sft.data.render import ConversationRenderer
from lit_sft.data.tokenize import IGNORE_INDEX, tokenize_rendered
from lit_sft.errors import InvalidRow, RowError
from tests.helpers import write_jsonl
from tests.real_vocab import (
    QWEN_ADDED,
    QWEN_FIRST_ADDED_ID,
    QWEN_PATTERN,
    llama3_tokenizer,
    qwen_ranks_file,
    qwen_tokenizer,
    template,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def call(city: str) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, **extra) -> dict:
    return {"role": "assistant", "content": text, **extra}


CONVERSATIONS = {
    "single": [user("What is 2+3?"), assistant("2+3 = 5.")],
    "system": [
        {"role": "system", "content": "Answer tersely."},
        user("Capital of France?"),
        assistant("Paris."),
    ],
    "multi_turn": [
        user("Hi!"),
        assistant("Hello! How can I help?"),
        user("Name a prime."),
        assistant("7"),
        user("Another?"),
        assistant("11"),
    ],
    "unicode_whitespace": [
        user("  naïve café, e\u0301 (NFD), 日本語, emoji 🙂\t tabs  "),
        assistant("  Ça va\t😀\n\nsecond paragraph  "),
        user("Code?"),
        assistant("def f(x):\n    return x ** 2\n"),
    ],
    "reasoning": [
        user("What is 6*7?"),
        assistant("42", reasoning_content="6*7 = 42."),
        user("And 6*8?"),
        assistant("48", reasoning_content="6*8 = 48, one more 6."),
    ],
    "think_inline": [
        user("1+1?"),
        assistant("<think>\nsmall sum\n</think>\n\n2"),
        user("2+2?"),
        assistant("4"),
    ],
    "tools": [
        {"role": "system", "content": "You can check the weather."},
        user("Weather in Paris?"),
        assistant("", tool_calls=[call("Paris")]),
        {"role": "tool", "content": '{"temp_c": 21}'},
        assistant("It is 21 °C in Paris."),
        user("And in Oslo and Rome?"),
        assistant("Checking both.", tool_calls=[call("Oslo"), call("Rome")]),
        {"role": "tool", "content": '{"temp_c": 4}'},
        {"role": "tool", "content": '{"temp_c": 25}'},
        assistant("Oslo 4 °C, Rome 25 °C."),
    ],
}
TOOL_CONVERSATIONS = {"tools"}


@pytest.fixture(scope="module")
def qwen3():
    return qwen_tokenizer(template("qwen3")), qwen_tokenizer(template("qwen3_marked"))


@pytest.fixture(scope="module")
def qwen2_5():
    return qwen_tokenizer(template("qwen2_5")), qwen_tokenizer(template("qwen2_5_marked"))


@pytest.fixture(scope="module")
def llama3():
    return llama3_tokenizer(template("llama3")), llama3_tokenizer(template("llama3_training"))


def conversation_of(messages, tools=None):
    row = {"messages": copy.deepcopy(messages)}
    if tools:
        row["tools"] = tools
    return row_to_conversation(row, "messages", FormatOptions())


def our_rows(tokenizer, messages, tools=None, template_kwargs=None, **options):
    renderer = ConversationRenderer(tokenizer, template_kwargs, **options)
    return tokenize_rendered(tokenizer, renderer.render_rows(conversation_of(messages, tools)))


def reference_turns(original, marked, messages, tools=None, template_kwargs=None):
    """For each assistant turn: the ids of the conversation through it and the span of its trained tokens."""
    kwargs = dict(template_kwargs or {})
    turns = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = conversation_of(messages[: index + 1], tools).messages
        text = original.apply_chat_template(prefix, tools=tools, tokenize=False, **kwargs)
        assert marked.apply_chat_template(prefix, tools=tools, tokenize=False, **kwargs) == text
        out = marked.apply_chat_template(
            prefix, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs
        )
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        assert ids == list(
            original.apply_chat_template(prefix, tools=tools, tokenize=True, return_dict=True, **kwargs)[
                "input_ids"
            ]
        )
        end = max(k for k, flag in enumerate(mask) if flag) + 1
        start = end
        while start > 0 and mask[start - 1]:
            start -= 1
        turns.append((ids, start, end))
    return turns


def assert_exact(rows, turns, tokenizer=None):
    """Every reference turn is trained exactly, in a row that holds its inference context; nothing else is.

    One documented difference: a token that straddles the turn's start (it holds the generation prompt's
    last newline and the content's first characters, as GPT-2-style pre-tokenizers make of "\n  Ça") is
    not trained by lit_sft, as it holds prompt text; transformers' mask includes it. Given the tokenizer,
    such a first token is accepted as untrained.
    """
    expected_total = 0
    for ids, start, end in turns:
        if (
            tokenizer is not None
            and tokenizer.decode(ids[start]).startswith("\n")
            and len(tokenizer.decode(ids[start])) > 1
        ):
            start += 1
        expected_total += end - start
        matches = [
            labels
            for row_ids, labels in rows
            if row_ids[: len(ids)] == ids
            and [k for k in range(start - 1, len(ids)) if labels[k] != IGNORE_INDEX]
            == list(range(start, end))
        ]
        assert matches, f"no row trains the turn ending at token {end} as the reference does"
    trained = sum(sum(label != IGNORE_INDEX for label in labels) for _, labels in rows)
    assert trained == expected_total


def test_the_converted_qwen_vocabulary_matches_tiktoken_on_the_same_ranks(qwen3) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    specials = {token: QWEN_FIRST_ADDED_ID + i for i, token in enumerate(QWEN_ADDED)}
    encoding = tiktoken.Encoding(
        "qwen",
        pat_str=QWEN_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(qwen_ranks_file())),
        special_tokens=specials,
    )
    tokenizer = qwen3[0]
    texts = [
        "Hello world! 12345 naïve café 日本語 🙂 Ça",
        "  leading\t\ttabs\n\n\nlines   trailing  ",
        "def f(x):\n    return x**2  # comment\r\n",
        "e\u0301 decomposed, ﬁ ligature",
        "<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>\n\n<tool_call>\n{}</tool_call>",
    ]
    for text in texts:
        expected = encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected
    assert tokenizer.convert_tokens_to_ids(["<|im_end|>", "<think>", "</think>"]) == [151645, 151667, 151668]


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_qwen2_5_masks_match_the_generation_marked_template(qwen2_5, name) -> None:
    messages = CONVERSATIONS[name]
    tools = TOOLS if name in TOOL_CONVERSATIONS else None
    rows = our_rows(qwen2_5[0], messages, tools)
    assert len(rows) == 1  # Qwen2.5's template never rewrites history
    assert_exact(rows, reference_turns(*qwen2_5, messages, tools))


# Reasoning with enable_thinking=false contradicts the prompt the template writes: refused (the refusal test).
QWEN3_CASES = [
    (name, thinking)
    for name in sorted(CONVERSATIONS)
    for thinking in (None, True, False)
    if not (thinking is False and name in ("reasoning", "think_inline"))
]


@pytest.mark.parametrize(
    ("name", "thinking"),
    QWEN3_CASES,
    ids=[
        f"{name}-{ {None: 'default', True: 'thinking', False: 'no-thinking'}[thinking] }"
        for name, thinking in QWEN3_CASES
    ],
)
def test_qwen3_masks_match_the_generation_marked_template(qwen3, name, thinking) -> None:
    messages = CONVERSATIONS[name]
    tools = TOOLS if name in TOOL_CONVERSATIONS else None
    kwargs = {} if thinking is None else {"enable_thinking": thinking}
    rows = our_rows(qwen3[0], messages, tools, kwargs)
    assert_exact(rows, reference_turns(*qwen3, messages, tools, kwargs))
    # Qwen3 drops an empty <think> block from a turn once later messages follow: a row per user query
    # (the turns after the last query keep their rendering), and in the tool conversation (no reasoning)
    # a row per assistant turn.
    expected = sum(message["role"] == ("assistant" if name == "tools" else "user") for message in messages)
    assert len(rows) == expected


def test_qwen3_split_rows_train_the_think_block_the_model_writes(qwen3) -> None:
    tokenizer = qwen3[0]
    rows = our_rows(tokenizer, CONVERSATIONS["reasoning"])
    trained = [tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) for _, labels in rows]
    assert trained == [
        "<think>\n6*7 = 42.\n</think>\n\n42<|im_end|>",
        "<think>\n6*8 = 48, one more 6.\n</think>\n\n48<|im_end|>",
    ]
    # The second row's history shows the first turn as Qwen3 does at inference: without its reasoning.
    assert "6*7 = 42." not in tokenizer.decode(rows[1][0])
    rows = our_rows(tokenizer, CONVERSATIONS["multi_turn"], template_kwargs={"enable_thinking": False})
    first = rows[0]
    assert tokenizer.decode(first[0]).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\nHello! How can I help?<|im_end|>\n"
    )
    assert tokenizer.decode([t for t in first[1] if t != IGNORE_INDEX]) == "Hello! How can I help?<|im_end|>"


def test_qwen3_with_rewritten_turns_error_refuses_and_names_the_option(qwen3) -> None:
    with pytest.raises(InvalidRow, match=r"data.rewritten_turns=split") as error:
        our_rows(qwen3[0], CONVERSATIONS["multi_turn"], rewritten_turns="error")
    assert error.value.field == "messages[1]" and error.value.kind == "template_not_prefix_stable"
    # Reasoning with thinking switched off contradicts the prompt the template writes: refused, named.
    with pytest.raises(InvalidRow, match="generation prompt") as error:
        our_rows(qwen3[0], CONVERSATIONS["reasoning"], template_kwargs={"enable_thinking": False})
    assert error.value.field == "messages[1]"


@pytest.mark.parametrize("name", sorted(set(CONVERSATIONS) - TOOL_CONVERSATIONS - {"reasoning"}))
def test_llama3_masks_match_the_generation_marked_template(llama3, name) -> None:
    messages = CONVERSATIONS[name]
    rows = our_rows(llama3[0], messages)
    assert len(rows) == 1
    assert rows[0][0].count(llama3[0].bos_token_id) == 1  # the template's BOS, not doubled
    assert_exact(rows, reference_turns(*llama3, messages))


ALL_CALLS = {"messages[2].tool_calls[0]", "messages[6].tool_calls[0]", "messages[6].tool_calls[1]"}


@pytest.mark.parametrize(
    ("name", "turns", "lost"),
    [
        ("llama3", 10, ALL_CALLS),  # Llama 3's template has no tool calls
        ("smollm2", 10, ALL_CALLS),  # nor SmolLM2's
        ("llama3_1", 5, set()),  # one call per turn; tool results are written as JSON strings
        ("qwen2_5", 10, set()),
        ("qwen3", 10, set()),
    ],
)
def test_content_a_template_drops_is_reported(llama3, name, turns, lost) -> None:
    tokenizer = copy.copy(llama3[0])  # only the text matters here: any vocabulary with a BOS does
    tokenizer.chat_template = template(name)
    conversation = conversation_of(CONVERSATIONS["tools"][:turns], TOOLS)
    rows = ConversationRenderer(tokenizer).render_rows(conversation)
    assert set(filter(None, rows[0].lost.split(", "))) == lost
    assert all(not row.lost for row in rows[1:])  # counted once per conversation
    if lost:
        with pytest.raises(InvalidRow, match="does not render tool call 0 of message 2") as error:
            ConversationRenderer(tokenizer, strict_template=True).render_rows(conversation)
        assert error.value.kind == "template_dropped_content"


def test_the_data_module_splits_counts_and_names_rows(tmp_path) -> None:
    rows = [{"messages": CONVERSATIONS["multi_turn"]}, {"messages": CONVERSATIONS["single"]}]
    rows.append({"messages": CONVERSATIONS["tools"][:5], "tools": json.dumps(TOOLS)})
    train = write_jsonl(str(tmp_path / "train.jsonl"), rows)

    def module(chat_template: str, **kwargs) -> SFTDataModule:
        dm = SFTDataModule(
            train_files=train,
            tokenizer_name_or_path="builtin:byte-chatml",
            chat_template=template(chat_template),
            shuffle=False,
            **kwargs,
        )
        dm.setup("fit")
        return dm

    summary = module("qwen3").summaries["train"]
    # multi_turn: a row per user query (3); single: 1; tools: the tool-call turn is rewritten, 2 rows.
    assert (summary.rows_read, summary.kept, summary.split_rows) == (3, 6, 3)
    assert summary.split_tokens > 0 and "3 rows added by splitting" in summary.line()
    assert not summary.template_losses
    with pytest.raises(RowError) as error:
        module("qwen3", rewritten_turns="error")
    message = str(error.value)
    assert "train.jsonl, row 0, field 'messages[1]'" in message
    assert message.index("rewritten_turns=split") < message.index("skip_invalid_rows")

    summary = module("smollm2").summaries["train"]  # SmolLM2's template writes no tool calls
    assert summary.template_losses == {"tool_calls": 1} and summary.split_rows == 0
    assert "train.jsonl, row 2, field 'messages[2].tool_calls[0]'" in summary.line()
    with pytest.raises(
        RowError, match=r"row 2, field 'messages\[2\].tool_calls\[0\]'.*strict_template=false"
    ):
        module("smollm2", strict_template=True)


@pytest.fixture(scope="module")
def smollm2():
    from lit_sft.hub import load_tokenizer
    from tests.real_vocab import smollm2_gguf

    tokenizer = load_tokenizer(str(smollm2_gguf()))  # tokenizer and template from the GGUF file
    assert tokenizer.chat_template == template("smollm2")
    marked = copy.copy(tokenizer)
    marked.chat_template = template("smollm2_marked")
    return tokenizer, marked


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(CONVERSATIONS) - TOOL_CONVERSATIONS - {"reasoning"}))
def test_smollm2_masks_from_the_gguf_tokenizer_match_the_generation_marked_template(smollm2, name) -> None:
    messages = CONVERSATIONS[name]
    rows = our_rows(smollm2[0], messages)
    assert len(rows) == 1
    assert_exact(rows, reference_turns(*smollm2, messages), tokenizer=smollm2[0])


def test_a_conversation_ending_with_a_user_message_adds_no_empty_row(qwen3) -> None:
    # Qwen3 strips the turn's empty <think> block once a user message follows, so the whole conversation
    # trains nothing: only the row ending with the turn remains.
    messages = [*CONVERSATIONS["single"], user("Thanks!")]
    rows = our_rows(qwen3[0], messages)
    assert len(rows) == 1
    assert_exact(rows, reference_turns(*qwen3, messages))
