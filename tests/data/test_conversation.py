from __future__ import annotations

import pytest

from lit_sft.data.conversation import (
    FormatOptions,
    get_path,
    resolve_format,
    row_to_conversation,
)
from lit_sft.data.tools import parse_tools
from lit_sft.errors import InvalidRow

PR = FormatOptions(prompt_key="question", response_key="answer")


def test_get_path_reads_nested_columns_and_prefers_literal_dotted_keys() -> None:
    row = {"extra_info": {"question": "q", "answer": {"value": 3}}, "a.b": 1}
    assert get_path(row, "extra_info.question") == "q"
    assert get_path(row, "extra_info.answer.value") == 3
    assert get_path(row, "a.b") == 1
    with pytest.raises(InvalidRow, match="no key 'missing' in extra_info") as error:
        get_path(row, "extra_info.missing")
    assert error.value.field == "extra_info.missing"


def test_resolve_format_auto_picks_messages_when_present() -> None:
    assert resolve_format(["messages", "x"], FormatOptions()) == "messages"
    assert resolve_format(["prompt", "response"], FormatOptions()) == "prompt_response"
    assert resolve_format(["messages"], FormatOptions(format="prompt_response")) == "prompt_response"


def test_prompt_string_becomes_a_user_message_and_only_the_response_is_trained() -> None:
    conversation = row_to_conversation({"question": "2+2?", "answer": "4"}, "prompt_response", PR)
    assert conversation.messages == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert conversation.trained == [False, True]


def test_prompt_as_message_list_from_nested_columns() -> None:
    """verl's GSM8K SFT parquet: the prompt is a list of chat messages, the answer nested in extra_info."""
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "extra_info": {"answer": "4\n#### 4"},
    }
    options = FormatOptions(prompt_key="prompt", response_key="extra_info.answer")
    conversation = row_to_conversation(row, "prompt_response", options)
    assert [m["role"] for m in conversation.messages] == ["system", "user", "assistant"]
    assert conversation.trained == [False, False, True]


def test_messages_train_all_assistant_turns_or_the_last() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    }
    assert row_to_conversation(row, "messages", FormatOptions()).trained == [False, True, False, True]
    last = FormatOptions(assistant_turns="last")
    assert row_to_conversation(row, "messages", last).trained == [False, False, False, True]


def test_weight_zero_assistant_messages_are_not_trained() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "weight": 0},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d", "weight": 1},
        ]
    }
    assert row_to_conversation(row, "messages", FormatOptions()).trained == [False, False, False, True]


def test_none_valued_keys_are_removed_and_tool_call_messages_may_have_no_content() -> None:
    """Parquet fills absent struct fields with null; templates must not see them."""
    call = [{"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]
    row = {
        "messages": [
            {"role": "user", "content": "add", "tool_calls": None},
            {"role": "assistant", "content": None, "tool_calls": call},
            {"role": "tool", "content": "1", "tool_calls": None},
            {"role": "assistant", "content": "It is 1.", "tool_calls": None},
        ],
        "tools": '[{"type": "function", "function": {"name": "add"}}]',
    }
    conversation = row_to_conversation(row, "messages", FormatOptions())
    assert conversation.messages[0] == {"role": "user", "content": "add"}
    assert conversation.messages[1] == {"role": "assistant", "tool_calls": call}
    assert conversation.tools == [{"type": "function", "function": {"name": "add"}}]


def test_system_prompt_is_added_when_absent() -> None:
    options = FormatOptions(prompt_key="question", response_key="answer", system_prompt="Think.")
    conversation = row_to_conversation({"question": "q", "answer": "a"}, "prompt_response", options)
    assert conversation.messages[0] == {"role": "system", "content": "Think."}
    assert conversation.trained == [False, False, True]


@pytest.mark.parametrize(
    ("row", "fmt", "field", "message", "kind"),
    [
        ({"answer": "4"}, "prompt_response", "question", "missing", "missing_field"),
        (
            {"question": None, "answer": "4"},
            "prompt_response",
            "question",
            "prompt is null",
            "invalid_content",
        ),
        (
            {"question": "  ", "answer": "4"},
            "prompt_response",
            "question",
            "prompt is empty",
            "invalid_content",
        ),
        (
            {"question": "q", "answer": ""},
            "prompt_response",
            "answer",
            "response is empty",
            "invalid_content",
        ),
        (
            {"question": "q", "answer": 4},
            "prompt_response",
            "answer",
            "must be a string, got int",
            "invalid_content",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]},
            "messages",
            "messages[1].role",
            "unknown role 'robot'",
            "unknown_role",
        ),
        (
            {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]},
            "messages",
            "messages[0].content",
            "content is null",
            "invalid_content",
        ),
        (
            {"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "a"}]},
            "messages",
            "messages[0].content",
            "must be a string, got list",
            "invalid_content",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
            "messages",
            "messages[1].content",
            "content is empty",
            "invalid_content",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}]},
            "messages",
            "messages",
            "no assistant",
            "no_assistant",
        ),
        ({"messages": []}, "messages", "messages", "empty", "invalid_messages"),
        ({"messages": "hello"}, "messages", "messages", "got a string", "invalid_messages"),
        ({"messages": ["hello"]}, "messages", "messages[0]", "must be a mapping", "invalid_messages"),
    ],
)
def test_bad_rows_name_the_field(row: dict, fmt: str, field: str, message: str, kind: str) -> None:
    with pytest.raises(InvalidRow, match=message) as error:
        row_to_conversation(row, fmt, PR)
    assert error.value.field == field
    assert error.value.kind == kind


def test_parse_tools_accepts_lists_json_and_nothing() -> None:
    assert parse_tools(None, "tools") is None
    assert parse_tools("", "tools") is None
    assert parse_tools([{"name": "f"}], "tools") == [{"name": "f"}]
    with pytest.raises(InvalidRow, match="not valid JSON"):
        parse_tools("[{", "tools")
    with pytest.raises(InvalidRow, match="list of JSON schemas"):
        parse_tools('"f"', "tools")
