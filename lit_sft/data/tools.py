"""Tools in conversations: tool schemas (a row's ``tools``), the tool calls of assistant messages, and
whether the calls and tool results of a conversation fit the tools it declares.

Everything here is pure and raises `InvalidRow` (field + reason); the caller knows the file and row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lit_sft.errors import InvalidRow


def parse_tool_arguments(arguments: Any, field_name: str) -> Any:
    """Tool-call arguments as templates expect them: a JSON string becomes its object (an empty string
    none); anything else is returned as it is.

    Raises:
        InvalidRow: For a string that is not valid JSON, naming ``field_name``.
    """
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except (json.JSONDecodeError, RecursionError):
        raise InvalidRow(field_name, "not valid JSON", kind="invalid_tool_call") from None


def without_nulls(value: Any) -> Any:
    """``value`` with every null-valued mapping key removed, at any depth (list items are kept)."""
    if isinstance(value, Mapping):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        return [without_nulls(item) for item in value]
    return value


def normalize_tool_calls(calls: Any, where: str, struct_nulls: bool = False) -> list[dict[str, Any]]:
    """Tool calls as templates expect them: None-valued keys removed, JSON-string arguments parsed.

    A call needs a ``function`` mapping with a non-empty string ``name`` and ``arguments`` that are a JSON
    object (a mapping, or a JSON string of one).
    """
    if not isinstance(calls, Sequence) or isinstance(calls, str | bytes):
        raise InvalidRow(f"{where}.tool_calls", "tool_calls must be a list", kind="invalid_tool_call")
    normalized = []
    for index, call in enumerate(calls):
        at = f"{where}.tool_calls[{index}]"
        if not isinstance(call, Mapping):
            raise InvalidRow(at, "a tool call must be a mapping", kind="invalid_tool_call")
        call = {key: value for key, value in call.items() if value is not None}
        function = call.get("function")
        if not isinstance(function, Mapping):
            got = "missing" if function is None else f"a {type(function).__name__}"
            raise InvalidRow(
                f"{at}.function", f"a tool call needs a function mapping, got {got}", kind="invalid_tool_call"
            )
        function = {key: value for key, value in function.items() if value is not None}
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            got = "missing" if name is None else repr(name) if isinstance(name, str) else type(name).__name__
            raise InvalidRow(
                f"{at}.function.name",
                f"the function name must be a non-empty string, got {got}",
                "invalid_tool_call",
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            arguments = parse_tool_arguments(arguments, f"{at}.function.arguments")
        elif struct_nulls and isinstance(arguments, Mapping):
            arguments = without_nulls(arguments)
        if not isinstance(arguments, Mapping):
            got = "missing" if arguments is None else f"JSON {type(arguments).__name__}"
            raise InvalidRow(
                f"{at}.function.arguments",
                f"arguments must be a JSON object (or a JSON string of one), got {got}",
                kind="invalid_tool_call",
            )
        function["arguments"] = arguments
        call["function"] = function
        normalized.append(call)
    return normalized


def parse_tools(value: Any, field_name: str, struct_nulls: bool = False) -> list[dict[str, Any]] | None:
    """Tool schemas from a list of mappings or a JSON string of one; None or empty means no tools.

    With ``struct_nulls`` (see `FormatOptions`), null-valued keys are dropped from mappings (not from a
    JSON string, which keeps what was written).
    """
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise InvalidRow(field_name, f"tools is not valid JSON ({error.msg})", "invalid_tools") from None
        except RecursionError:
            raise InvalidRow(field_name, "tools is nested too deeply", "invalid_tools") from None
    elif struct_nulls:
        value = without_nulls(value)
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not all(isinstance(t, Mapping) for t in value)
    ):
        raise InvalidRow(field_name, "tools must be a list of JSON schemas (mappings)", "invalid_tools")
    for index, tool in enumerate(value):
        name = _tool_name(tool)
        if not isinstance(name, str) or not name.strip():
            raise InvalidRow(
                f"{field_name}[{index}]", "a tool schema needs a non-empty string name", "invalid_tools"
            )
    return [dict(tool) for tool in value] or None


def _tool_name(tool: Mapping[str, Any]) -> Any:
    function = tool.get("function")
    return function.get("name") if isinstance(function, Mapping) else tool.get("name")


def check_tool_use(
    messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None, field_name: str
) -> None:
    """Tool calls must name a tool the row declares (when it declares any), and every tool result must
    answer an assistant tool call made before it.

    Raises:
        InvalidRow: Kind ``mismatched_tools``, naming the message.
    """
    declared = {_tool_name(tool) for tool in tools or []}
    answering = False  # whether tool results may follow (an assistant tool call came last)
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "assistant":
            calls = message.get("tool_calls") or []
            for position, call in enumerate(calls):
                name = (
                    call.get("function", {}).get("name")
                    if isinstance(call.get("function"), Mapping)
                    else None
                )
                if tools and name not in declared:
                    raise InvalidRow(
                        f"{field_name}[{index}].tool_calls[{position}].function.name",
                        f"calls {name!r}, which is not among the row's tools {sorted(map(str, declared))}",
                        kind="mismatched_tools",
                    )
            answering = bool(calls)
        elif role == "tool":
            if not answering:
                raise InvalidRow(
                    f"{field_name}[{index}]",
                    "a tool result with no assistant tool call before it",
                    "mismatched_tools",
                )
        else:
            answering = False
