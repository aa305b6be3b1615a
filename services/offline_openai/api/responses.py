"""The Responses API and the Conversations API (the stateful tier's default backend)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..caching import RETENTIONS
from ..errors import ApiError, bad_request, not_found
from ..generation import ModelCall, ModelResult, reported_tier
from ..items import (
    input_item,
    input_items,
    reply_items,
    saved_goal_for_output,
)
from ..replies import VERBOSITIES, GoalCall, TextReply
from ..store import Conversation, ResponseRecord, StoredItem, new_id, now
from .http import (
    SERVICE_TIERS,
    callable_tools,
    choice_param,
    metadata_param,
    no_stream,
    note_call,
    optional_float,
    optional_int,
    optional_str,
    read_body,
    required_str,
    respond,
    tools_param,
)
from .paging import page
from .routes import Routes


def _responses_usage(result: ModelResult) -> dict[str, Any]:
    return {
        "input_tokens": result.input_tokens,
        "input_tokens_details": {"cached_tokens": result.cached_tokens,
                                 "cache_write_tokens": result.cache_write_tokens},
        "output_tokens": result.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": result.total_tokens,
    }


class ResponsesRoutes(Routes):
    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/responses", self.create_response)
        router.add_get("/v1/responses/{response_id}", self.get_response)
        router.add_delete("/v1/responses/{response_id}", self.delete_response)
        router.add_post("/v1/conversations", self.create_conversation)
        router.add_get("/v1/conversations/{conversation_id}", self.get_conversation)
        router.add_post("/v1/conversations/{conversation_id}", self.update_conversation)
        router.add_delete("/v1/conversations/{conversation_id}", self.delete_conversation)
        router.add_post("/v1/conversations/{conversation_id}/items", self.create_items)
        router.add_get("/v1/conversations/{conversation_id}/items", self.list_items)
        router.add_get("/v1/conversations/{conversation_id}/items/{item_id}", self.get_item)
        router.add_delete("/v1/conversations/{conversation_id}/items/{item_id}", self.delete_item)


    # ---- responses -------------------------------------------------------------------

    async def create_response(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        no_stream(body)
        model = required_str(body, "model")
        if "input" not in body:
            raise ApiError(400, "Missing required parameter: 'input'.", param="input",
                           code="missing_required_parameter")
        new_items = input_items(body["input"])
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise bad_request("'instructions' must be a string", "instructions")
        tools = tools_param(body)
        conversation: Conversation | None = None
        raw_conversation = body.get("conversation")
        previous_id = optional_str(body, "previous_response_id")
        context: list[StoredItem] = []
        if raw_conversation is not None:
            if previous_id:
                raise bad_request(
                    "'previous_response_id' cannot be used together with 'conversation'",
                    "previous_response_id",
                )
            conversation_id = (
                raw_conversation.get("id")
                if isinstance(raw_conversation, dict)
                else raw_conversation
            )
            if not isinstance(conversation_id, str) or not conversation_id:
                raise bad_request("'conversation' must be an id or {\"id\": ...}", "conversation")
            conversation = self.store.conversation(conversation_id)
            context = list(conversation.items)
        elif previous_id:
            context = list(self.store.response(previous_id).context)
        everything = context + new_items
        max_output_tokens = optional_int(body, "max_output_tokens")
        cache_key = optional_str(body, "prompt_cache_key") or None
        retention = choice_param(body.get("prompt_cache_retention"), "prompt_cache_retention",
                                 RETENTIONS)
        text_param = body.get("text")
        if text_param is not None and not isinstance(text_param, dict):
            raise bad_request("'text' must be an object", "text")
        verbosity = choice_param((text_param or {}).get("verbosity"), "text.verbosity",
                                 VERBOSITIES)
        tier = choice_param(body.get("service_tier"), "service_tier", SERVICE_TIERS)
        self._flex_capacity(request, tier)
        await self._model_latency()
        result = self.model.generate(
            ModelCall(
                model=model,
                context=[item.segment for item in everything],
                instructions=instructions or "",
                tools=tools,
                tool_names=callable_tools(body, tools, nested=False),
                cache_key=cache_key,
                max_output_tokens=max_output_tokens,
                saved_goal=saved_goal_for_output(everything),
                cache_retention=retention,
                verbosity=verbosity,
            )
        )
        note_call(request, model, result)
        call = result.reply if isinstance(result.reply, GoalCall) else None
        text = result.reply.text if isinstance(result.reply, TextReply) else None
        output = reply_items(text, call, result.truncated)
        if conversation is not None:
            conversation.items.extend(new_items)
            conversation.items.extend(output)
        created = time.time()
        response = {
            "id": new_id("resp"),
            "object": "response",
            "created_at": int(created),
            "completed_at": int(created),
            "status": "incomplete" if result.truncated else "completed",
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if result.truncated else None,
            "instructions": instructions,
            "max_output_tokens": max_output_tokens,
            "model": model,
            "output": [item.body for item in output],
            "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
            "previous_response_id": previous_id or None,
            "conversation": {"id": conversation.id} if conversation is not None else None,
            "prompt_cache_key": cache_key,
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True) is not False,
            "temperature": optional_float(body, "temperature", 1.0),
            "top_p": optional_float(body, "top_p", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": verbosity or "medium"},
            "prompt_cache_retention": retention,
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": tools,
            "truncation": body.get("truncation", "disabled"),
            "usage": _responses_usage(result),
            "user": body.get("user"),
            "metadata": metadata_param(body),
            "service_tier": reported_tier(tier),
        }
        if response["store"]:
            self.store.remember_response(ResponseRecord(response, everything + output))
        return respond(response)

    async def get_response(self, request: web.Request) -> web.Response:
        return respond(self.store.response(request.match_info["response_id"]).body)

    async def delete_response(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        self.store.response(response_id)
        del self.store.responses[response_id]
        return respond({"id": response_id, "object": "response.deleted", "deleted": True})

    # ---- conversations ---------------------------------------------------------------

    async def create_conversation(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        raw_items = body.get("items") or []
        items = input_items(raw_items, "items") if raw_items else []
        conversation = Conversation(new_id("conv"), now(), metadata_param(body), items)
        self.store.conversations[conversation.id] = conversation
        return respond(conversation.to_json())

    async def get_conversation(self, request: web.Request) -> web.Response:
        return respond(self.store.conversation(request.match_info["conversation_id"]).to_json())

    async def update_conversation(self, request: web.Request) -> web.Response:
        conversation = self.store.conversation(request.match_info["conversation_id"])
        body = await read_body(request)
        if "metadata" not in body:
            raise ApiError(400, "Missing required parameter: 'metadata'.", param="metadata",
                           code="missing_required_parameter")
        conversation.metadata = metadata_param(body)
        return respond(conversation.to_json())

    async def delete_conversation(self, request: web.Request) -> web.Response:
        conversation = self.store.conversation(request.match_info["conversation_id"])
        del self.store.conversations[conversation.id]
        return respond({"id": conversation.id, "object": "conversation.deleted", "deleted": True})

    async def create_items(self, request: web.Request) -> web.Response:
        conversation = self.store.conversation(request.match_info["conversation_id"])
        body = await read_body(request)
        raw = body.get("items")
        if not isinstance(raw, list) or not raw:
            raise ApiError(400, "'items' must be a non-empty list.", param="items",
                           code="missing_required_parameter")
        items = [input_item(item, f"items[{index}]") for index, item in enumerate(raw)]
        conversation.items.extend(items)
        return respond(
            {
                "object": "list",
                "data": [item.body for item in items],
                "first_id": items[0].id,
                "last_id": items[-1].id,
                "has_more": False,
            }
        )

    async def list_items(self, request: web.Request) -> web.Response:
        conversation = self.store.conversation(request.match_info["conversation_id"])
        entries = [(item.id, item.body) for item in conversation.items]
        return respond(page(entries, request.query, default_order="desc"))

    def _find_item(self, request: web.Request) -> tuple[Conversation, int]:
        conversation = self.store.conversation(request.match_info["conversation_id"])
        item_id = request.match_info["item_id"]
        for index, item in enumerate(conversation.items):
            if item.id == item_id:
                return conversation, index
        raise not_found("item", item_id, "item_id")

    async def get_item(self, request: web.Request) -> web.Response:
        conversation, index = self._find_item(request)
        return respond(conversation.items[index].body)

    async def delete_item(self, request: web.Request) -> web.Response:
        conversation, index = self._find_item(request)
        del conversation.items[index]
        return respond(conversation.to_json())
