"""Rows to conversations: the dataset-specific half of the data path.

A row of a parquet/jsonl file becomes a `Conversation`: a list of chat messages (plus tools) and, for
each message, whether it is a training target. Two row formats are understood:

* ``prompt_response``: a prompt (a string, or a list of chat messages as in verl's GSM8K parquet) and a
  response string, each found by a column name or a dotted path into nested columns
  (``extra_info.question``). Only the response is trained.
* ``messages``: a list of ``{"role", "content"}`` messages with an optional ``tools`` column. All
  assistant turns are trained, or only the last one. An assistant message with ``"weight": 0`` (the
  OpenAI fine-tuning convention) is never trained.

Everything here is pure and raises `InvalidRow` (field + reason); the caller knows the file and row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lit_sft.data.tools import check_tool_use, normalize_tool_calls, parse_tools
from lit_sft.errors import InvalidRow

RowFormat = Literal["auto", "prompt_response", "messages"]
AssistantTurns = Literal["all", "last"]

#: Roles a message may have. ``tool`` carries a tool's result back to the model.
KNOWN_ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True)
class FormatOptions:
    """How to read conversations out of rows.

    Args:
        format: ``prompt_response``, ``messages``, or ``auto`` (``messages`` when the messages column
            exists, else ``prompt_response``).
        prompt_key: Column (or dotted path) of the prompt.
        response_key: Column (or dotted path) of the response.
        messages_key: Column (or dotted path) of the message list.
        tools_key: Column of the tool schemas (a list, or a JSON string of one); optional.
        assistant_turns: Train ``all`` assistant turns of a ``messages`` row, or the ``last`` only.
        system_prompt: A system message prepended to conversations that have none.
        multimodal: Accept content given as a list of text and image parts.
        struct_nulls: The rows come from an Arrow schema (parquet, Hub datasets), where a struct column
            gives every row every key any row has, the missing ones as null. Null-valued keys are then
            dropped inside tool schemas and tool-call arguments, since they cannot be told apart from
            keys that were never written (store them as JSON strings to keep explicit nulls). Set per
            source by the data module.
    """

    format: RowFormat = "auto"
    prompt_key: str = "prompt"
    response_key: str = "response"
    messages_key: str = "messages"
    tools_key: str = "tools"
    assistant_turns: AssistantTurns = "all"
    system_prompt: str | None = None
    multimodal: bool = False
    struct_nulls: bool = False


@dataclass
class Conversation:
    """Chat messages ready for a chat template.

    Attributes:
        messages: Messages with ``role``, ``content`` and any extra keys the template may use
            (``tool_calls``, ``name``...); keys whose value is None are removed.
        trained: For each message, whether it is a training target (only assistant messages can be).
        tools: Tool schemas to pass to the template, or None.
        field: The row field the messages came from, for error messages.
    """

    messages: list[dict[str, Any]]
    trained: list[bool]
    tools: list[dict[str, Any]] | None = None
    field: str = "messages"


_MISSING = object()


def get_path(row: Mapping[str, Any], path: str) -> Any:
    """Value at ``path`` in ``row``: a column name, or a dotted path into nested columns.

    A key that itself contains dots is matched first, so ``"a.b"`` finds a column named ``a.b``.

    Raises:
        InvalidRow: When a part of the path is missing or a parent is not a mapping.
    """
    if path in row:
        return row[path]
    value: Any = row
    for depth, part in enumerate(path.split(".")):
        if not isinstance(value, Mapping) or value.get(part, _MISSING) is _MISSING:
            where = ".".join(path.split(".")[:depth]) or "the row"
            raise InvalidRow(path, f"missing (no key '{part}' in {where})", kind="missing_field")
        value = value[part]
    return value


def resolve_format(columns: Sequence[str], options: FormatOptions) -> Literal["prompt_response", "messages"]:
    """The row format to use for a dataset with these top-level columns."""
    if options.format != "auto":
        return options.format
    return "messages" if options.messages_key.split(".")[0] in columns else "prompt_response"


def required_columns(fmt: Literal["prompt_response", "messages"], options: FormatOptions) -> list[str]:
    """Top-level columns a dataset must have for ``fmt`` (checked once per file, before any row)."""
    keys = [options.messages_key] if fmt == "messages" else [options.prompt_key, options.response_key]
    return [key.split(".")[0] for key in keys]


def _check_parts(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """Content parts of a multimodal message: ``{"type": "text", "text"}`` and ``{"type": "image"[, "image"]}``."""
    parts = []
    if not message["content"]:
        raise InvalidRow(f"{where}.content", "content is an empty list", kind="invalid_content")
    for index, part in enumerate(message["content"]):
        at = f"{where}.content[{index}]"
        if not isinstance(part, Mapping) or part.get("type") not in ("text", "image"):
            raise InvalidRow(
                at, "a content part must be {type: text, text} or {type: image}", "invalid_content"
            )
        part = {key: value for key, value in part.items() if value is not None}
        if part["type"] == "text" and (not isinstance(part.get("text"), str) or not part["text"].strip()):
            raise InvalidRow(f"{at}.text", "a text part needs non-empty text", kind="invalid_content")
        if part["type"] == "image" and message["role"] != "user":
            raise InvalidRow(
                at,
                f"images are supported in user messages, not in {message['role']} messages",
                "invalid_content",
            )
        parts.append(part)
    return parts


def _check_content(message: Mapping[str, Any], where: str, multimodal: bool = False) -> None:
    content = message.get("content")
    has_tool_calls = bool(message.get("tool_calls"))
    if content is None:
        if message["role"] == "assistant" and has_tool_calls:
            return
        raise InvalidRow(f"{where}.content", "content is null", kind="invalid_content")
    if multimodal and isinstance(content, Sequence) and not isinstance(content, str):
        message["content"] = _check_parts(message, where)  # type: ignore[index]
        return
    if not isinstance(content, str):
        raise InvalidRow(
            f"{where}.content",
            f"content must be a string, got {type(content).__name__}",
            kind="invalid_content",
        )
    if not content.strip() and not has_tool_calls:
        raise InvalidRow(f"{where}.content", "content is empty", kind="invalid_content")


def _check_weight(message: Mapping[str, Any], where: str) -> None:
    """``weight`` (OpenAI's fine-tuning convention) is 0 or 1; ``"0"`` would otherwise train the turn."""
    weight = message.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight not in (0, 1):
        raise InvalidRow(f"{where}.weight", f"weight must be 0 or 1, got {weight!r}", kind="invalid_weight")


def normalize_messages(
    value: Any, field_name: str, multimodal: bool = False, struct_nulls: bool = False
) -> list[dict[str, Any]]:
    """Validate a list of chat messages and return clean copies (None-valued keys removed).

    Raises:
        InvalidRow: For a value that is not a list of messages, a message without a known role, or
            null, empty or non-string content (null/empty content is allowed on an assistant message
            that has ``tool_calls``).
    """
    if isinstance(value, str):
        raise InvalidRow(field_name, "expected a list of messages, got a string", kind="invalid_messages")
    if not isinstance(value, Sequence) or isinstance(value, bytes | Mapping):
        raise InvalidRow(
            field_name, f"expected a list of messages, got {type(value).__name__}", kind="invalid_messages"
        )
    if len(value) == 0:
        raise InvalidRow(field_name, "the message list is empty", kind="invalid_messages")
    messages = []
    for index, raw in enumerate(value):
        where = f"{field_name}[{index}]"
        if not isinstance(raw, Mapping):
            raise InvalidRow(
                where, f"a message must be a mapping, got {type(raw).__name__}", "invalid_messages"
            )
        message = {key: item for key, item in raw.items() if item is not None}
        role = message.get("role")
        # The type first: a list or dict role (valid JSON) is unhashable and would raise in the set lookup.
        if not isinstance(role, str) or role not in KNOWN_ROLES:
            raise InvalidRow(
                f"{where}.role",
                f"unknown role {role!r} (expected one of {sorted(KNOWN_ROLES)})",
                "unknown_role",
            )
        _check_content(message, where, multimodal)
        if "weight" in message:
            _check_weight(message, where)
        if "tool_calls" in message:
            message["tool_calls"] = normalize_tool_calls(message["tool_calls"], where, struct_nulls)
        messages.append(message)
    return messages


def _messages_conversation(row: Mapping[str, Any], options: FormatOptions) -> Conversation:
    messages = normalize_messages(
        get_path(row, options.messages_key), options.messages_key, options.multimodal, options.struct_nulls
    )
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1) != 0]
    if options.assistant_turns == "last":
        assistant = assistant[-1:]
    trained = [i in assistant for i in range(len(messages))]
    tools = _row_tools(row, options)
    check_tool_use(messages, tools, options.messages_key)
    return Conversation(messages=messages, trained=trained, tools=tools, field=options.messages_key)


def _row_tools(row: Mapping[str, Any], options: FormatOptions) -> list[dict[str, Any]] | None:
    if options.tools_key not in row:
        return None
    return parse_tools(row[options.tools_key], options.tools_key, options.struct_nulls)


def prompt_messages(row: Mapping[str, Any], options: FormatOptions) -> list[dict[str, Any]]:
    """The prompt of a ``prompt_response`` row as chat messages (a string prompt becomes a user message).

    The system prompt option is applied as in training, so evaluation prompts match training prompts.

    Raises:
        InvalidRow: When the prompt is missing, null, empty or malformed.
    """
    prompt = get_path(row, options.prompt_key)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidRow(options.prompt_key, "prompt is empty", kind="invalid_content")
        messages = [{"role": "user", "content": prompt}]
    elif prompt is None:
        raise InvalidRow(options.prompt_key, "prompt is null", kind="invalid_content")
    else:
        messages = normalize_messages(prompt, options.prompt_key, struct_nulls=options.struct_nulls)
        # Checked before the system prompt is inserted, so that errors name the row's own indices.
        check_tool_use(messages, _row_tools(row, options), options.prompt_key)
    if options.system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": options.system_prompt})
    return messages


def _prompt_response_conversation(row: Mapping[str, Any], options: FormatOptions) -> Conversation:
    messages = prompt_messages(row, options)
    response = get_path(row, options.response_key)
    if response is None:
        raise InvalidRow(options.response_key, "response is null", kind="invalid_content")
    if not isinstance(response, str):
        raise InvalidRow(
            options.response_key,
            f"response must be a string, got {type(response).__name__}",
            kind="invalid_content",
        )
    if not response.strip():
        raise InvalidRow(options.response_key, "response is empty", kind="invalid_content")
    messages.append({"role": "assistant", "content": response})
    trained = [False] * (len(messages) - 1) + [True]
    tools = _row_tools(row, options)
    return Conversation(messages=messages, trained=trained, tools=tools, field=options.prompt_key)


def row_to_conversation(
    row: Mapping[str, Any], fmt: Literal["prompt_response", "messages"], options: FormatOptions
) -> Conversation:
    """Read one row as a conversation.

    Args:
        row: The row, as ``datasets`` gives it (nested columns are mappings).
        fmt: The resolved row format (see `resolve_format`).
        options: Column names and training options.

    Raises:
        InvalidRow: When the row is malformed or has no assistant message to train.
    """
    if fmt == "messages":
        conversation = _messages_conversation(row, options)
    else:
        conversation = _prompt_response_conversation(row, options)
    if not any(conversation.trained):
        field_name = options.messages_key if fmt == "messages" else options.response_key
        raise InvalidRow(field_name, "the conversation has no assistant message to train", "no_assistant")
    if (
        fmt == "messages"
        and options.system_prompt is not None
        and conversation.messages[0]["role"] != "system"
    ):
        conversation.messages.insert(0, {"role": "system", "content": options.system_prompt})
        conversation.trained.insert(0, False)
    return conversation
