"""Chat Completions: ``POST /v1/chat/completions`` (the cheap tier's one request)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..caching import RETENTIONS
from ..errors import ApiError, bad_request
from ..generation import ModelCall, ModelResult, reported_tier
from ..items import content_text, goal_from_arguments
from ..replies import VERBOSITIES, GoalCall
from ..store import new_id, now
from ..tokens import Segment
from .http import (
    SERVICE_TIERS,
    callable_tools,
    choice_param,
    no_stream,
    note_call,
    optional_int,
    optional_str,
    read_body,
    required_str,
    respond,
    tools_param,
)
from .routes import Routes


def _chat_usage(result: ModelResult) -> dict[str, Any]:
    return {
        "prompt_tokens": result.input_tokens,
        "completion_tokens": result.output_tokens,
        "total_tokens": result.total_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens, "audio_tokens": 0,
                                  "cache_write_tokens": result.cache_write_tokens},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class ChatRoutes(Routes):
    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self.chat_completions)

    async def chat_completions(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        no_stream(body)
        model = required_str(body, "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list.", param="messages",
                           code="missing_required_parameter")
        tools = tools_param(body)
        segments: list[Segment] = []
        goals_by_call: dict[str, str] = {}
        saved_goal = ""
        for index, message in enumerate(messages):
            param = f"messages[{index}]"
            if not isinstance(message, dict):
                raise bad_request("each message must be an object", param)
            role = message.get("role")
            if role not in ("system", "developer", "user", "assistant", "tool"):
                raise bad_request(f"unsupported role {role!r}", f"{param}.role")
            text = content_text(message.get("content"), f"{param}.content")
            if role == "assistant":
                for call in message.get("tool_calls") or []:
                    function = call.get("function", {}) if isinstance(call, dict) else {}
                    name, arguments = function.get("name", ""), function.get("arguments", "")
                    text += f"{name}{arguments}"
                    goals_by_call[str(call.get("id"))] = goal_from_arguments(str(arguments))
            if role == "tool":
                saved_goal = goals_by_call.get(str(message.get("tool_call_id")), "")
            segments.append(Segment(str(role), text))
        max_tokens = optional_int(body, "max_completion_tokens") or optional_int(
            body, "max_tokens"
        )
        retention = choice_param(body.get("prompt_cache_retention"), "prompt_cache_retention",
                                 RETENTIONS)
        verbosity = choice_param(body.get("verbosity"), "verbosity", VERBOSITIES)
        tier = choice_param(body.get("service_tier"), "service_tier", SERVICE_TIERS)
        self._flex_capacity(request, tier)
        await self._model_latency()
        result = self.model.generate(
            ModelCall(
                model=model,
                context=segments,
                tools=tools,
                tool_names=callable_tools(body, tools, nested=True),
                cache_key=optional_str(body, "prompt_cache_key") or None,
                max_output_tokens=max_tokens,
                saved_goal=saved_goal if segments[-1].role == "tool" else "",
                cache_retention=retention,
                verbosity=verbosity,
            )
        )
        note_call(request, model, result)
        message_body: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": [],
        }
        if isinstance(result.reply, GoalCall):
            message_body["tool_calls"] = [
                {
                    "id": new_id("call"),
                    "type": "function",
                    "function": {"name": result.reply.name, "arguments": result.reply.arguments},
                }
            ]
            finish_reason = "tool_calls"
        else:
            message_body["content"] = result.reply.text
            finish_reason = "length" if result.truncated else "stop"
        return respond(
            {
                "id": new_id("chatcmpl"),
                "object": "chat.completion",
                "created": now(),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message_body,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": _chat_usage(result),
                "service_tier": reported_tier(tier),
                "system_fingerprint": "fp_offline",
            }
        )

