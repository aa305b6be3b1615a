"""Request content → stored items and prompt segments; model replies → API output items."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import bad_request
from .replies import GoalCall
from .store import StoredItem, new_id
from .tokens import Segment

TEXT_PART_TYPES = frozenset({"input_text", "output_text", "text"})
MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})


def content_text(content: Any, param: str) -> str:
    """The text of a message's content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise bad_request("content must be a string or a list of content parts", param)
    texts: list[str] = []
    for index, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict) or part.get("type") not in TEXT_PART_TYPES:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise bad_request(
                f"unsupported content part type {kind!r}: the offline server takes text parts only",
                f"{param}[{index}]",
            )
        text = part.get("text")
        if isinstance(text, dict):  # Assistants' {"value": ..., "annotations": [...]}
            text = text.get("value")
        if not isinstance(text, str):
            raise bad_request("a text part needs a string `text`", f"{param}[{index}].text")
        texts.append(text)
    return "".join(texts)


def message_item(role: str, text: str, item_id: str | None = None) -> StoredItem:
    if role == "assistant":
        content: list[dict[str, Any]] = [
            {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        ]
    else:
        content = [{"type": "input_text", "text": text}]
    body = {
        "id": item_id or new_id("msg"),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": content,
    }
    return StoredItem(body, Segment(role, text))


def function_call_item(call_id: str, name: str, arguments: str) -> StoredItem:
    body = {
        "id": new_id("fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }
    return StoredItem(body, Segment("assistant", name + arguments))


def function_output_item(call_id: str, output: str) -> StoredItem:
    body = {
        "id": new_id("fco"),
        "type": "function_call_output",
        "call_id": call_id,
        "output": output,
        "status": "completed",
    }
    return StoredItem(body, Segment("tool", output))


def input_item(raw: Any, param: str) -> StoredItem:
    """One Responses/Conversations input item, normalised to its stored form."""
    if not isinstance(raw, dict):
        raise bad_request("each input item must be an object", param)
    kind = raw.get("type", "message")
    if kind == "message":
        role = raw.get("role")
        if role not in MESSAGE_ROLES:
            raise bad_request(f"unsupported role {role!r}", f"{param}.role")
        return message_item(str(role), content_text(raw.get("content"), f"{param}.content"))
    if kind == "function_call_output":
        call_id, output = raw.get("call_id"), raw.get("output")
        if not isinstance(call_id, str) or not call_id:
            raise bad_request("function_call_output needs a `call_id`", f"{param}.call_id")
        if not isinstance(output, str):
            output = content_text(output, f"{param}.output")
        return function_output_item(call_id, output)
    if kind == "function_call":
        call_id, name, arguments = raw.get("call_id"), raw.get("name"), raw.get("arguments")
        if not all(isinstance(v, str) for v in (call_id, name, arguments)):
            raise bad_request("function_call needs `call_id`, `name` and `arguments`", param)
        return function_call_item(str(call_id), str(name), str(arguments))
    raise bad_request(f"unsupported input item type {kind!r}", f"{param}.type")


def input_items(raw: Any, param: str = "input") -> list[StoredItem]:
    if isinstance(raw, str):
        return [message_item("user", raw)]
    if not isinstance(raw, list):
        raise bad_request(f"`{param}` must be a string or a list of items", param)
    return [input_item(item, f"{param}[{index}]") for index, item in enumerate(raw)]


def reply_items(reply_text: str | None, call: GoalCall | None, truncated: bool) -> list[StoredItem]:
    """The output items of one response: a message, a function call, or both (the message
    first: the reply written with the call)."""
    if call is not None:
        called = function_call_item(new_id("call"), call.name, call.arguments)
        return [message_item("assistant", call.preamble), called] if call.preamble else [called]
    item = message_item("assistant", reply_text or "")
    if truncated:
        item.body["status"] = "incomplete"
    return [item]


def goal_from_arguments(arguments: str) -> str:
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        return ""
    goal = parsed.get("goal") if isinstance(parsed, dict) else None
    return goal if isinstance(goal, str) else ""


def saved_goal_for_output(items: Sequence[StoredItem]) -> str:
    """When the newest item is a function output, the goal of the call it answers."""
    if not items or items[-1].body.get("type") != "function_call_output":
        return ""
    call_id = items[-1].body.get("call_id")
    for item in reversed(items):
        body = item.body
        if body.get("type") == "function_call" and body.get("call_id") == call_id:
            return goal_from_arguments(str(body.get("arguments", "")))
    return ""


def function_tool_names(tools: Iterable[Any], nested: bool) -> frozenset[str]:
    """Names of function tools: flat ({"type","name"}) or nested ({"function": {"name"}})."""
    names: set[str] = set()
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        spec = tool.get("function") if nested else tool
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            names.add(spec["name"])
    return frozenset(names)
