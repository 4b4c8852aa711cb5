"""``lit-sft prepare``: turn raw datasets into the formats lit_sft (and verl) train on.

* ``lit-sft prepare gsm8k --source <dir of jsonl | Hub id> --out DIR`` writes GSM8K in verl's
  single-turn SFT/RL parquet format (``DIR/{train,test}.parquet``) and as ``messages`` rows
  (``DIR/multiturn/{train,test}.parquet``); see `lit_sft.gsm8k.prepare`.
* ``lit-sft prepare chat --source FILE --out FILE`` converts ShareGPT-style (``conversations`` of
  ``{from, value}``) or OpenAI-style (``messages`` with ``tools`` and assistant ``tool_calls``) data into
  lit_sft's ``messages`` + ``tools`` rows, validating every row and counting what it drops.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from lit_sft.data.conversation import normalize_messages
from lit_sft.data.sources import load_source
from lit_sft.data.tools import parse_tool_arguments, parse_tools
from lit_sft.errors import ConfigError, InvalidRow
from lit_sft.gsm8k.prepare import gsm8k
from lit_sft.io import write_rows

#: ShareGPT speaker names and the roles they become.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


def _tool_call(function: Mapping[str, Any], where: str, call_id: str | None = None) -> dict[str, Any]:
    arguments = parse_tool_arguments(function.get("arguments", {}), f"{where}.arguments")
    call = {"type": "function", "function": {"name": function.get("name"), "arguments": arguments}}
    if call_id:
        call["id"] = call_id
    return call


def _openai_tool_call(call: Any, where: str) -> Any:
    """An OpenAI tool call (``{id, type, function: {name, arguments}}``, or a bare ``{name, arguments}``)."""
    if not isinstance(call, Mapping):
        return call  # normalize_messages names it
    if "function" in call:
        return _tool_call(call["function"], f"{where}.function", call.get("id"))
    return _tool_call(call, where, call.get("id"))


def from_sharegpt(row: Mapping[str, Any], key: str = "conversations") -> dict[str, Any]:
    """A ShareGPT row (``conversations`` of ``{from, value}``, optional ``system`` and ``tools``) as messages."""
    turns = row.get(key)
    if not isinstance(turns, Sequence) or isinstance(turns, str):
        raise InvalidRow(key, "expected a list of {from, value} turns", "invalid_messages")
    messages = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages.append({"role": "system", "content": row["system"]})
    for index, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, Mapping) else None
        if speaker not in SHAREGPT_ROLES:
            raise InvalidRow(f"{key}[{index}].from", f"unknown speaker {speaker!r}", "unknown_role")
        value = turn.get("value")
        if speaker == "function_call":
            try:
                call = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError:
                raise InvalidRow(
                    f"{key}[{index}].value", "function_call is not valid JSON", "invalid_tool_call"
                ) from None
            calls = call if isinstance(call, list) else [call]
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [_tool_call(c, f"{key}[{index}].value") for c in calls],
                }
            )
        else:
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    tools = parse_tools(row.get("tools"), "tools")
    if tools:  # ShareGPT lists bare function schemas; chat templates expect OpenAI's wrapper
        tools = [tool if "function" in tool else {"type": "function", "function": tool} for tool in tools]
    return {"messages": messages, "tools": tools}


def from_openai(row: Mapping[str, Any], key: str = "messages") -> dict[str, Any]:
    """An OpenAI-style row: ``developer`` becomes ``system``; tool-call arguments become objects."""
    raw = row.get(key)
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise InvalidRow(key, "expected a list of messages", "invalid_messages")
    messages = []
    for index, message in enumerate(raw):
        message = (
            {k: v for k, v in dict(message).items() if v is not None}
            if isinstance(message, Mapping)
            else message
        )
        if isinstance(message, dict):
            if message.get("role") == "developer":
                message["role"] = "system"
            if message.get("tool_calls"):
                message["tool_calls"] = [
                    _openai_tool_call(call, f"{key}[{index}].tool_calls[{number}]")
                    for number, call in enumerate(message["tool_calls"])
                ]
        messages.append(message)
    return {"messages": messages, "tools": parse_tools(row.get("tools"), "tools")}


def chat(
    source: str,
    out: str,
    format: Literal["auto", "sharegpt", "openai"] = "auto",
    messages_key: str | None = None,
    skip_invalid_rows: bool = True,
) -> dict[str, Any]:
    """Convert chat data to lit_sft's ``messages`` (+ ``tools``) rows, validating each row.

    Tool calls become ``{"type": "function", "function": {"name", "arguments": <object>}}``; ``tools`` is
    written as a JSON string (one schema type per column keeps parquet files readable).

    Args:
        source: A jsonl/parquet file, a dataset directory, or a Hub id.
        out: The output file (``.jsonl`` or ``.parquet``).
        format: ``sharegpt`` (``conversations`` of ``{from, value}``), ``openai`` (``messages``), or ``auto``.
        messages_key: The column holding the turns (default: ``conversations`` or ``messages``).
        skip_invalid_rows: Drop malformed rows and count them (else stop at the first, naming it).

    Returns:
        Rows read, written and dropped by reason.
    """
    dataset = load_source(source).dataset
    if format == "auto":
        format = "sharegpt" if "conversations" in dataset.column_names else "openai"
    key = messages_key or ("conversations" if format == "sharegpt" else "messages")
    convert = from_sharegpt if format == "sharegpt" else from_openai
    rows: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    for index, row in enumerate(dataset):
        try:
            converted = convert(row, key)
            converted["messages"] = normalize_messages(converted["messages"], "messages")
            if not any(m["role"] == "assistant" for m in converted["messages"]):
                raise InvalidRow("messages", "no assistant message", "no_assistant")
        except InvalidRow as error:
            if not skip_invalid_rows:
                raise ConfigError(f"{source}, row {index}, field '{error.field}': {error.reason}") from None
            dropped[error.kind] += 1
            continue
        if out.endswith(".parquet"):
            for message in converted["messages"]:  # nested objects of varying shape do not fit one schema
                for call in message.get("tool_calls", []):
                    call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
        converted["tools"] = json.dumps(converted["tools"]) if converted["tools"] else ""
        rows.append(converted)
    write_rows(out, rows)
    summary = {"read": len(dataset), "written": len(rows), "dropped": dict(dropped)}
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()))
    print(
        f"chat ({format}): {len(dataset)} rows read, {len(rows)} written to {out}, {sum(dropped.values())} dropped ({reasons or 'none'})"
    )
    return summary


def main(command: str, args: list[str]) -> None:
    """``lit-sft prepare gsm8k|chat ...`` through jsonargparse (options and help from the signatures)."""
    from jsonargparse import CLI

    CLI({"gsm8k": gsm8k, "chat": chat}, args=args, prog="lit-sft prepare", as_positional=False)
