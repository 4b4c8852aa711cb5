"""Writes the malformed-input corpus (``tests/corpus/files``) and its expectations (``expected.json``).

    python tests/corpus/make_corpus.py

Every case is a file with a few good rows and one bad one (or a file that cannot be read at all), the
options it is read with, the error it must give (a substring naming file, row and field), and, for
row-level faults, the reason it is counted under when ``skip_invalid_rows`` drops it.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.join(HERE, "files")

GOOD_PR = [{"question": f"What is {i} plus 1?", "answer": f"{i}+1 = {i + 1}\n#### {i + 1}"} for i in range(3)]


def chat(*turns: tuple[str, object], **extra: object) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns], **extra}


GOOD_CHAT = [chat(("user", f"Hi {i}"), ("assistant", f"Hello {i}")) for i in range(3)]
CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
TOOLS = json.dumps([{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}])
PR = {"prompt_key": "question", "response_key": "answer"}

# A template that drops the reasoning of earlier assistant turns (Qwen3-style): not prefix-stable.
UNSTABLE_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\\n' + m.content.split('</think>')[-1] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def with_bad(good: list, bad: object, at: int = 1) -> list:
    return [*good[:at], bad, *good[at:]]


def tool_row(function: dict) -> dict:
    """A chat row whose assistant calls ``function`` (no tools column: any name may be called)."""
    return {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": function}]},
            {"role": "tool", "content": "3"},
            {"role": "assistant", "content": "3"},
        ]
    }


#: Enough rows for several of the JSON reader's ~320 KB blocks.
BIG_PR = [
    {"question": f"What is {i} plus 1? " + "x" * 30, "answer": f"{i}+1 = {i + 1}\n#### {i + 1}"}
    for i in range(5000)
]


# name -> (rows or raw bytes, options, expected error substring, drop reason or None for file-level errors)
CASES: dict[str, tuple[object, dict, str, str | None]] = {
    # prompt/response rows
    "pr_prompt_null.jsonl": (
        with_bad(GOOD_PR, {"question": None, "answer": "a"}),
        PR,
        "row 1, field 'question': prompt is null",
        "invalid_content",
    ),
    "pr_prompt_empty.jsonl": (
        with_bad(GOOD_PR, {"question": "", "answer": "a"}),
        PR,
        "row 1, field 'question': prompt is empty",
        "invalid_content",
    ),
    "pr_prompt_whitespace.jsonl": (
        with_bad(GOOD_PR, {"question": " \n\t", "answer": "a"}),
        PR,
        "row 1, field 'question': prompt is empty",
        "invalid_content",
    ),
    "pr_response_null.jsonl": (
        with_bad(GOOD_PR, {"question": "q", "answer": None}),
        PR,
        "row 1, field 'answer': response is null",
        "invalid_content",
    ),
    "pr_response_empty.jsonl": (
        with_bad(GOOD_PR, {"question": "q", "answer": ""}),
        PR,
        "row 1, field 'answer': response is empty",
        "invalid_content",
    ),
    "pr_response_missing_key.jsonl": (
        with_bad(GOOD_PR, {"question": "q"}),
        PR,
        "row 1, field 'answer': response is null",
        "invalid_content",
    ),
    "pr_response_number.parquet": (
        [{"question": "q", "answer": 4}, {"question": "r", "answer": 5}],
        PR,
        "row 0, field 'answer': response must be a string, got int",
        "invalid_content",
    ),
    "pr_response_list.parquet": (
        [{"question": "q", "answer": ["a", "b"]}],
        PR,
        "row 0, field 'answer': response must be a string, got list",
        "invalid_content",
    ),
    "pr_prompt_number.parquet": (
        [{"question": 7, "answer": "a"}],
        PR,
        "row 0, field 'question': expected a list of messages, got int",
        "invalid_messages",
    ),
    "pr_nested_missing.jsonl": (
        [{"extra": {"q": "a", "a": "b"}}, {"extra": None}],
        {"prompt_key": "extra.q", "response_key": "extra.a"},
        "row 1, field 'extra.q': missing (no key 'q' in extra)",
        "missing_field",
    ),
    "pr_missing_column.jsonl": (
        [{"question": "q", "reply": "a"}],
        PR,
        "missing column 'answer' for the prompt_response format",
        None,
    ),
    # messages rows
    "msg_unknown_role.jsonl": (
        with_bad(GOOD_CHAT, chat(("user", "q"), ("bot", "a"))),
        {},
        "row 1, field 'messages[1].role': unknown role 'bot'",
        "unknown_role",
    ),
    "msg_missing_role.jsonl": (
        with_bad(GOOD_CHAT, {"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}),
        {},
        "row 1, field 'messages[0].role': unknown role None",
        "unknown_role",
    ),
    "msg_user_content_null.jsonl": (
        with_bad(GOOD_CHAT, chat(("user", None), ("assistant", "a"))),
        {},
        "row 1, field 'messages[0].content': content is null",
        "invalid_content",
    ),
    "msg_assistant_content_empty.jsonl": (
        with_bad(GOOD_CHAT, chat(("user", "q"), ("assistant", ""))),
        {},
        "row 1, field 'messages[1].content': content is empty",
        "invalid_content",
    ),
    "msg_content_parts.jsonl": (
        [chat(("user", [{"type": "text", "text": "q"}]), ("assistant", "a"))],
        {},
        "row 0, field 'messages[0].content': content must be a string, got list",
        "invalid_content",
    ),
    "msg_not_a_list.jsonl": (
        [{"messages": "hello"}],
        {},
        "row 0, field 'messages': expected a list of messages, got a string",
        "invalid_messages",
    ),
    "msg_empty_list.jsonl": (
        with_bad(GOOD_CHAT, {"messages": []}),
        {},
        "row 1, field 'messages': the message list is empty",
        "invalid_messages",
    ),
    "msg_no_assistant.jsonl": (
        with_bad(GOOD_CHAT, chat(("system", "s"), ("user", "q"))),
        {},
        "row 1, field 'messages': the conversation has no assistant message to train",
        "no_assistant",
    ),
    "msg_all_weights_zero.jsonl": (
        with_bad(
            GOOD_CHAT,
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 0},
                ]
            },
        ),
        {},
        "row 1, field 'messages': the conversation has no assistant message to train",
        "no_assistant",
    ),
    "msg_starts_with_assistant.jsonl": (
        with_bad(GOOD_CHAT, chat(("assistant", "a"), ("user", "q"), ("assistant", "b"))),
        {},
        "row 1, field 'messages[0]': the conversation starts with an assistant message",
        "invalid_messages",
    ),
    "msg_message_not_a_mapping.jsonl": (
        [{"messages": ["hi", "there"]}],
        {},
        "row 0, field 'messages[0]': a message must be a mapping, got str",
        "invalid_messages",
    ),
    # tools
    "tools_invalid_json.jsonl": (
        with_bad(
            [{**row, "tools": ""} for row in GOOD_CHAT],
            {**chat(("user", "q"), ("assistant", "a")), "tools": "{broken"},
        ),
        {},
        "row 1, field 'tools': tools is not valid JSON",
        "invalid_tools",
    ),
    "tools_not_a_list.jsonl": (
        with_bad(
            [{**row, "tools": ""} for row in GOOD_CHAT],
            {**chat(("user", "q"), ("assistant", "a")), "tools": '"add"'},
        ),
        {},
        "row 1, field 'tools': tools must be a list of JSON schemas",
        "invalid_tools",
    ),
    "tools_call_not_declared.jsonl": (
        [
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"type": "function", "function": {"name": "mul", "arguments": {}}}],
                    },
                    {"role": "tool", "content": "2"},
                    {"role": "assistant", "content": "2"},
                ],
                "tools": TOOLS,
            }
        ],
        {},
        "row 0, field 'messages[1].tool_calls[0].function.name': calls 'mul', which is not among the row's tools ['add']",
        "mismatched_tools",
    ),
    "tools_result_without_call.jsonl": (
        [
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "tool", "content": "3"},
                    {"role": "assistant", "content": "3"},
                ],
                "tools": TOOLS,
            }
        ],
        {},
        "row 0, field 'messages[1]': a tool result with no assistant tool call before it",
        "mismatched_tools",
    ),
    "tools_bad_arguments.jsonl": (
        [
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"type": "function", "function": {"name": "add", "arguments": "{not json"}}
                        ],
                    },
                    {"role": "tool", "content": "3"},
                    {"role": "assistant", "content": "3"},
                ],
                "tools": TOOLS,
            }
        ],
        {},
        "row 0, field 'messages[1].tool_calls[0].function.arguments': not valid JSON",
        "invalid_tool_call",
    ),
    # lengths
    "too_long_error.jsonl": (
        with_bad(GOOD_PR, {"question": "q" * 400, "answer": "a"}),
        {**PR, "max_length": 200},
        "row 1, field 'question': the conversation (max_length=200) has 4",
        "too_long",
    ),
    "too_long_prompt_error.jsonl": (
        with_bad(GOOD_PR, {"question": "q" * 400, "answer": "a"}),
        {**PR, "max_prompt_length": 100},
        "row 1, field 'question': the prompt has 4",
        "too_long",
    ),
    # templates
    "template_not_prefix_stable.jsonl": (
        [chat(("user", "a"), ("assistant", "<think>x</think>b"), ("user", "c"), ("assistant", "d"))],
        {"chat_template": UNSTABLE_TEMPLATE, "rewritten_turns": "error"},  # "split" (the default) trains it
        "row 0, field 'messages[1]': the chat template renders this assistant turn differently when later "
        "messages follow (it rewrites history, as Qwen3 does with <think> blocks), so it cannot be trained in "
        "the same row as them; set data.rewritten_turns=split (the default) to train it in a row that ends "
        "with it. Or set data.skip_invalid_rows=true",
        "template_not_prefix_stable",
    ),
    "template_rejects_system.jsonl": (
        with_bad(GOOD_CHAT, chat(("system", "s"), ("user", "q"), ("assistant", "a"))),
        {"chat_template": NO_SYSTEM_TEMPLATE},
        "row 1, field 'messages': the chat template rejected the conversation: TemplateError: System role not supported",
        "template_error",
    ),
    # files that cannot be read
    "broken_line.jsonl": (
        [*map(json.dumps, GOOD_PR[:2]), '{"question": "q", "answer": ', json.dumps(GOOD_PR[2])],
        PR,
        "cannot read it: line 3 is not valid JSON",
        None,
    ),
    "non_utf8.jsonl": (
        b'{"question": "caf\xe9", "answer": "a"}\n',
        PR,
        "cannot read it: line 1 is not valid UTF-8",
        None,
    ),
    "corrupt.parquet": (b"PAR1 this is not a parquet file PAR1", PR, "corrupt.parquet: cannot read it", None),
    "truncated.parquet": ("truncate", PR, "truncated.parquet: cannot read it", None),
    "empty.jsonl": (b"", PR, "empty.jsonl: the file is empty", None),
    "rows.txt": (b"question,answer\n", PR, "rows.txt: unknown file type", None),
    # issue 15, class 1: nesting deeper than Python's json recursion (a traceback before)
    "deep_nesting.jsonl": (
        [json.dumps(GOOD_PR[0]), '{"question": "q", "answer": ' + "[" * 3000 + "]" * 3000 + "}"],
        PR,
        "cannot read it: line 2 is nested more than 200 levels deep; row 1",
        None,
    ),
    # class 2: row numbers across Arrow blocks (~320 KB), of a line that is not an object, in a directory
    "big_file_row_4868.jsonl": (
        with_bad(BIG_PR, {"question": "q", "answer": None}, at=4868),
        PR,
        "big_file_row_4868.jsonl, row 4868, field 'answer': response is null",
        "invalid_content",
    ),
    "array_on_a_middle_line.jsonl": (
        [*map(json.dumps, GOOD_PR), "[1, 2]", json.dumps(GOOD_PR[0])],
        PR,
        "cannot read it: line 4 is a JSON array, not an object (each line must hold one row); row 3",
        None,
    ),
    "directory_of_files": (
        {"train-0.jsonl": GOOD_PR, "train-1.jsonl": with_bad(GOOD_PR, {"question": "q", "answer": 7})},
        PR,
        "train-1.jsonl, row 1, field 'answer': response must be a string, got int",
        "invalid_content",
    ),
    # class 3: errors that named no place, or the wrong one
    "blank_line_and_a_number.jsonl": (
        [json.dumps(GOOD_PR[0]), "", json.dumps(GOOD_PR[1]), json.dumps({"question": "q", "answer": 5})],
        PR,
        "row 2, field 'answer': response must be a string, got int",
        "invalid_content",
    ),
    "bom_and_a_number.jsonl": (
        b"\xef\xbb\xbf"
        + "\n".join(
            json.dumps(row) for row in with_bad(GOOD_PR, {"question": "q", "answer": 5}, at=2)
        ).encode(),
        PR,
        "row 2, field 'answer': response must be a string, got int",
        "invalid_content",
    ),
    "thirty_digit_integer.jsonl": (
        with_bad(GOOD_PR, '{"question": "q", "answer": 123456789012345678901234567890}'),
        PR,
        "row 1, field 'answer': response must be a string, got int",
        "invalid_content",
    ),
    "list_with_a_string.json": (
        json.dumps([GOOD_PR[0], "not a row", GOOD_PR[1]]).encode(),
        PR,
        "cannot read it: element 1 is a JSON string, not an object (rows must be objects); row 1",
        None,
    ),
    "latin1_byte.csv": (
        b"question,answer\nWhat is 1 plus 1?,2\ncaf\xe9?,a\n",
        PR,
        "cannot read it: line 3 is not valid UTF-8 (invalid continuation byte at byte 3); row 1",
        None,
    ),
    # class 4: one row's type must not change how the others are read
    "number_among_strings.jsonl": (
        [
            *map(json.dumps, [{"question": "a", "answer": "42"}, {"question": "b", "answer": 5}]),
            json.dumps({"question": "c", "answer": '"yes"'}),
        ],
        PR,
        "row 1, field 'answer': response must be a string, got int",
        "invalid_content",
    ),
    # class 5: tool calls
    "tools_arguments_list.jsonl": (
        [tool_row({"name": "add", "arguments": [1, 2]})],
        {},
        "row 0, field 'messages[1].tool_calls[0].function.arguments': arguments must be a JSON object (or a JSON string of one), got JSON list",
        "invalid_tool_call",
    ),
    "tools_arguments_json_number.jsonl": (
        [tool_row({"name": "add", "arguments": "3"})],
        {},
        "row 0, field 'messages[1].tool_calls[0].function.arguments': arguments must be a JSON object (or a JSON string of one), got JSON int",
        "invalid_tool_call",
    ),
    "tools_call_without_name.jsonl": (
        [tool_row({"arguments": {"a": 1}})],
        {},
        "row 0, field 'messages[1].tool_calls[0].function.name': the function name must be a non-empty string, got missing",
        "invalid_tool_call",
    ),
    "tools_name_is_an_object.jsonl": (
        [tool_row({"name": {"x": "add"}, "arguments": {"a": 1}})],
        {},
        "row 0, field 'messages[1].tool_calls[0].function.name': the function name must be a non-empty string, got dict",
        "invalid_tool_call",
    ),
    "verl_prompt_with_tool_message.jsonl": (
        [
            {"prompt": [{"role": "user", "content": "q"}], "response": "a"},
            {"prompt": [{"role": "user", "content": "q"}, {"role": "tool", "content": "3"}], "response": "a"},
        ],
        {},
        "row 1, field 'prompt[1]': a tool result with no assistant tool call before it",
        "mismatched_tools",
    ),
    # class 6: weights
    "weight_string_no.jsonl": (
        with_bad(
            GOOD_CHAT,
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": "no"},
                ]
            },
        ),
        {},
        "row 1, field 'messages[1].weight': weight must be 0 or 1, got 'no'",
        "invalid_weight",
    ),
    "weight_string_zero.jsonl": (
        with_bad(
            GOOD_CHAT,
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": "0"},
                ]
            },
        ),
        {},
        "row 1, field 'messages[1].weight': weight must be 0 or 1, got '0'",
        "invalid_weight",
    ),
    # class 7: parquet structs give every row every key, missing ones as null (dropped, never rendered)
    "parquet_tool_call_null_name.parquet": (
        [tool_row({"name": "add", "arguments": {"a": 1}}), tool_row({"arguments": {"a": 1}})],
        {},
        "row 1, field 'messages[1].tool_calls[0].function.name': the function name must be a non-empty string, got missing",
        "invalid_tool_call",
    ),
}


def write(name: str, content: object) -> None:
    path = os.path.join(FILES, name)
    if isinstance(content, dict):  # a dataset directory: one file per key
        os.makedirs(path, exist_ok=True)
        for file_name, rows in content.items():
            write(os.path.join(name, file_name), rows)
    elif isinstance(content, bytes):
        with open(path, "wb") as handle:
            handle.write(content)
    elif content == "truncate":
        pq.write_table(pa.Table.from_pylist(GOOD_PR), path)
        with open(path, "rb") as handle:
            data = handle.read()
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
    elif name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(content), path)
    else:
        with open(path, "w", encoding="utf-8") as handle:
            for row in content:
                handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def main() -> None:
    os.makedirs(FILES, exist_ok=True)
    expected = {}
    for name, (content, options, error, reason) in CASES.items():
        write(name, content)
        expected[name] = {"options": options, "error": error, "dropped_as": reason}
    with open(os.path.join(HERE, "expected.json"), "w", encoding="utf-8") as handle:
        json.dump(expected, handle, indent=1, sort_keys=True)
        handle.write("\n")
    print(f"{len(CASES)} cases written to {FILES}")


if __name__ == "__main__":
    main()
