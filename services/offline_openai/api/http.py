"""Reading OpenAI-style requests and writing their answers, for every route family."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import ApiError, bad_request
from ..generation import ModelResult
from ..items import function_tool_names

# Request key: the model and tokens of the call a request made, for its log line.
MODEL_CALL_KEY = web.RequestKey("offline_openai.model_call", dict)


def respond(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``data`` as the JSON body of the answer."""
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode("utf-8"),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def read_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(
            400,
            f"We could not parse the JSON body of your request ({exc}).",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


def required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                       code="missing_required_parameter")
    return value


def optional_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string", name)
    return value


def optional_int(body: dict[str, Any], name: str, minimum: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise bad_request(f"'{name}' must be an integer >= {minimum}", name)
    return value


def optional_float(body: dict[str, Any], name: str, default: float | None) -> float | None:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise bad_request(f"'{name}' must be a number", name)
    return float(value)


def tools_param(body: dict[str, Any]) -> list[Any]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list", "tools")
    return tools


def callable_tools(body: dict[str, Any], tools: list[Any], nested: bool) -> frozenset[str]:
    """The function tools the model may call this time: every function tool in ``tools``
    narrowed by ``tool_choice``, as the API reads it: "auto" / "required" (all),
    "none" (no call), one named function, or ``allowed_tools`` (a subset, which leaves the
    ``tools`` list, and so the cached prompt prefix, unchanged). A name not in ``tools``
    is a 400, as upstream."""
    names = function_tool_names(tools, nested)
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "required"):
        return names
    if choice == "none":
        return frozenset()
    if not isinstance(choice, dict):
        raise bad_request("'tool_choice' must be auto, none, required or an object",
                          "tool_choice")

    kind = choice.get("type")
    if kind == "function":
        listed: Any = [choice]
    elif kind == "allowed_tools":
        # Responses: {"type", "mode", "tools"}; Chat Completions nests them under
        # "allowed_tools".
        inner = choice.get("allowed_tools", choice) if nested else choice
        listed = inner.get("tools") if isinstance(inner, dict) else None
        if not isinstance(listed, list):
            raise bad_request("tool_choice.tools must be a list", "tool_choice")
    else:
        raise bad_request(f"unknown tool_choice type {kind!r}", "tool_choice")
    for tool in listed:
        found = function_tool_names([tool], nested)
        if not found or not found <= names:
            raise bad_request(f"tool_choice names a tool that is not in 'tools': {tool!r}",
                              "tool_choice")
    return function_tool_names(listed, nested)


def metadata_param(body: dict[str, Any], default: dict[str, Any] | None = None) -> dict[str, Any]:
    value = body.get("metadata", default)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("'metadata' must be an object", "metadata")
    return value


def no_stream(body: dict[str, Any]) -> None:
    if body.get("stream"):
        raise bad_request("streaming is not supported by the offline server", "stream")


def note_call(request: web.Request, model: str, result: ModelResult) -> None:
    """Keeps the model call a request made, for the request's log line."""
    request[MODEL_CALL_KEY] = {
        "model": model,
        "input_tokens": result.input_tokens,
        "cached_tokens": result.cached_tokens,
        "output_tokens": result.output_tokens,
    }


def choice_param(value: Any, name: str, choices: tuple[str, ...]) -> str | None:
    """An optional string that must be one of ``choices`` (None when absent)."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in choices:
        raise bad_request(f"'{name}' must be one of {', '.join(choices)}", name)
    return value


SERVICE_TIERS = ("auto", "default", "flex", "priority", "scale")
