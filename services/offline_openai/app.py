"""HTTP routes of the offline OpenAI-compatible server (aiohttp).

Handlers are thin: parse the request, call the store / model, shape the answer the
way the `openai` SDK parses it. Errors are `ApiError`s, turned into OpenAI's error
JSON by one middleware, which also counts requests, applies faults and logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from .clock import SimClock
from .config import OfflineConfig
from .errors import ApiError, bad_request, not_found
from .faults import FaultMode, FaultPlan, Faults
from .generation import ModelCall, ModelResult, OfflineModel
from .items import (
    content_text,
    function_tool_names,
    goal_from_arguments,
    input_item,
    input_items,
    reply_items,
    saved_goal_for_output,
)
from .replies import GoalCall, TextReply
from .stats import Stats
from .store import (
    Assistant,
    Conversation,
    ResponseRecord,
    Run,
    StateStore,
    StoredItem,
    Thread,
    ThreadMessage,
    new_id,
    now,
)
from .tokens import Segment

log = logging.getLogger("services.offline_openai")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

KNOWN_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o4-mini",
)
ACTIVE_RUN_STATUSES = frozenset({"queued", "in_progress", "requires_action", "cancelling"})
ASSISTANTS_PREFIXES = ("/v1/assistants", "/v1/threads")
HANG_POLL_SECONDS = 0.2
# Request key: the model and tokens of the call a request made, for its log line.
MODEL_CALL_KEY = web.RequestKey("offline_openai.model_call", dict)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode("utf-8"),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def _body(request: web.Request) -> dict[str, Any]:
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


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                       code="missing_required_parameter")
    return value


def _optional_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string", name)
    return value


def _optional_int(body: dict[str, Any], name: str, minimum: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise bad_request(f"'{name}' must be an integer >= {minimum}", name)
    return value


def _optional_float(body: dict[str, Any], name: str, default: float | None) -> float | None:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise bad_request(f"'{name}' must be a number", name)
    return float(value)


def _tools(body: dict[str, Any]) -> list[Any]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list", "tools")
    return tools


def _metadata(body: dict[str, Any], default: dict[str, Any] | None = None) -> dict[str, Any]:
    value = body.get("metadata", default)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("'metadata' must be an object", "metadata")
    return value


def _no_stream(body: dict[str, Any]) -> None:
    if body.get("stream"):
        raise bad_request("streaming is not supported by the offline server", "stream")


def _page(
    ids_and_bodies: Sequence[tuple[str, dict[str, Any]]],
    query: Any,
    default_order: str,
) -> dict[str, Any]:
    """A cursor page: limit (1-100, default 20), order, after, before."""
    try:
        limit = int(query.get("limit", 20))
    except ValueError:
        raise bad_request("'limit' must be an integer", "limit") from None
    if not 1 <= limit <= 100:
        raise bad_request("'limit' must be between 1 and 100", "limit")
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be 'asc' or 'desc'", "order")
    ordered = list(ids_and_bodies) if order == "asc" else list(reversed(ids_and_bodies))
    position = {item_id: index for index, (item_id, _) in enumerate(ordered)}
    start, stop = 0, len(ordered)
    after, before = query.get("after"), query.get("before")
    if after:
        if after not in position:
            raise bad_request(f"no item with id '{after}' to page after", "after")
        start = position[after] + 1
    if before:
        if before not in position:
            raise bad_request(f"no item with id '{before}' to page before", "before")
        stop = position[before]
    window = ordered[start:stop]
    page = window[:limit]
    return {
        "object": "list",
        "data": [body for _, body in page],
        "first_id": page[0][0] if page else None,
        "last_id": page[-1][0] if page else None,
        "has_more": len(window) > limit,
    }


def _chat_usage(result: ModelResult) -> dict[str, Any]:
    return {
        "prompt_tokens": result.input_tokens,
        "completion_tokens": result.output_tokens,
        "total_tokens": result.total_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _responses_usage(result: ModelResult) -> dict[str, Any]:
    return {
        "input_tokens": result.input_tokens,
        "input_tokens_details": {"cached_tokens": result.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": result.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": result.total_tokens,
    }


class OfflineApi:
    """The routes, over one store, one model and one fault plan."""

    def __init__(
        self,
        config: OfflineConfig,
        store: StateStore,
        model: OfflineModel,
        faults: Faults,
        stats: Stats,
        clock: SimClock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock if clock is not None else model.cache.clock
        self.store = store
        self.model = model
        self.faults = faults
        self.stats = stats
        self.closing = False

    # ---- plumbing -------------------------------------------------------------------

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_post("/v1/responses", self.create_response)
        r.add_get("/v1/responses/{response_id}", self.get_response)
        r.add_delete("/v1/responses/{response_id}", self.delete_response)
        r.add_post("/v1/conversations", self.create_conversation)
        r.add_get("/v1/conversations/{conversation_id}", self.get_conversation)
        r.add_post("/v1/conversations/{conversation_id}", self.update_conversation)
        r.add_delete("/v1/conversations/{conversation_id}", self.delete_conversation)
        r.add_post("/v1/conversations/{conversation_id}/items", self.create_items)
        r.add_get("/v1/conversations/{conversation_id}/items", self.list_items)
        r.add_get("/v1/conversations/{conversation_id}/items/{item_id}", self.get_item)
        r.add_delete("/v1/conversations/{conversation_id}/items/{item_id}", self.delete_item)
        r.add_post("/v1/assistants", self.create_assistant)
        r.add_get("/v1/assistants", self.list_assistants)
        r.add_get("/v1/assistants/{assistant_id}", self.get_assistant)
        r.add_post("/v1/assistants/{assistant_id}", self.update_assistant)
        r.add_delete("/v1/assistants/{assistant_id}", self.delete_assistant)
        r.add_post("/v1/threads", self.create_thread)
        r.add_get("/v1/threads/{thread_id}", self.get_thread)
        r.add_post("/v1/threads/{thread_id}", self.update_thread)
        r.add_delete("/v1/threads/{thread_id}", self.delete_thread)
        r.add_post("/v1/threads/{thread_id}/messages", self.create_message)
        r.add_get("/v1/threads/{thread_id}/messages", self.list_messages)
        r.add_get("/v1/threads/{thread_id}/messages/{message_id}", self.get_message)
        r.add_post("/v1/threads/{thread_id}/runs", self.create_run)
        r.add_get("/v1/threads/{thread_id}/runs", self.list_runs)
        r.add_get("/v1/threads/{thread_id}/runs/{run_id}", self.get_run)
        r.add_post(
            "/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", self.submit_tool_outputs
        )
        r.add_post("/v1/threads/{thread_id}/runs/{run_id}/cancel", self.cancel_run)
        r.add_get("/v1/models", self.list_models)
        r.add_get("/v1/models/{model_id}", self.get_model)
        r.add_post("/_control/faults", self.set_faults)
        r.add_get("/_control/faults", self.get_faults)
        r.add_get("/_control/stats", self.get_stats)
        r.add_post("/_control/reset", self.reset)
        r.add_post("/_control/clock", self.set_clock)
        r.add_get("/_control/clock", self.get_clock)
        r.add_get("/_control/health", self.health)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = new_id("req")
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        endpoint = f"{request.method} {route}"
        counted = not request.path.startswith("/_control/")
        if counted:
            self.stats.requests[endpoint] += 1
        fault: FaultPlan | None = None
        try:
            if request.path.startswith("/v1/"):
                fault = self.faults.take(request.path)
                if fault is not None:
                    await self._apply_fault(request, fault)
                if request.path.startswith(ASSISTANTS_PREFIXES):
                    beta = request.headers.get("OpenAI-Beta", "")
                    if "assistants=v2" not in beta:
                        raise ApiError(
                            400,
                            "You must provide the 'OpenAI-Beta' header to access the Assistants "
                            "API. Please try again by setting the header "
                            "'OpenAI-Beta: assistants=v2'.",
                            code="invalid_beta",
                        )
            response = await handler(request)
        except ApiError as err:
            response = _json(err.body(), err.status, err.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = "not_found" if exc.status == 404 else None
            http_error = ApiError(
                exc.status, f"{exc.reason}: {request.method} {request.path}", code=code
            )
            response = _json(http_error.body(), http_error.status)
        if counted:
            self.stats.statuses[response.status] += 1
        if fault is not None:
            self.stats.faults_injected += 1
        response.headers["x-request-id"] = request_id
        elapsed = time.perf_counter() - started
        if counted:
            self.stats.handling_s[endpoint] += elapsed
        fields: dict[str, Any] = {
            "event": "request",
            "request_id": request_id,
            "route": endpoint,
            "status": response.status,
            "latency_ms": round(elapsed * 1000, 2),
        }
        if fault is not None:
            fields["fault"] = fault.mode.value
        fields.update(request.get(MODEL_CALL_KEY, {}))
        # A stand-in for the upstream: one line per request only when asked (LOG_LEVEL=DEBUG),
        # or when a fault was injected; it should cost as little as a real upstream does here.
        log.log(logging.INFO if fault is not None else logging.DEBUG, "request", extra=fields)
        return response

    async def _apply_fault(self, request: web.Request, plan: FaultPlan) -> None:
        if plan.mode is FaultMode.ERROR_500:
            raise ApiError(
                500,
                "The server had an error while processing your request. (injected fault)",
                type_="server_error",
            )
        if plan.mode is FaultMode.ERROR_429:
            raise ApiError(
                429,
                "Rate limit reached. Please try again later. (injected fault)",
                type_="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(plan.retry_after_s)},
            )
        if plan.mode is FaultMode.LATENCY:
            await asyncio.sleep(plan.latency_ms / 1000)
        elif plan.mode is FaultMode.HANG:
            await self._hang(request)

    async def _hang(self, request: web.Request) -> None:
        """Answer nothing until the fault is set/cleared again or the client goes away."""
        generation = self.faults.generation
        while not self.closing:
            if await self.faults.wait_for_change(generation, HANG_POLL_SECONDS):
                return
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ApiError(499, "client closed the connection while the server hung")

    @staticmethod
    def _note_call(request: web.Request, model: str, result: ModelResult) -> None:
        request[MODEL_CALL_KEY] = {
            "model": model,
            "input_tokens": result.input_tokens,
            "cached_tokens": result.cached_tokens,
            "output_tokens": result.output_tokens,
        }

    async def _model_latency(self) -> None:
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)

    # ---- chat completions ------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.Response:
        body = await _body(request)
        _no_stream(body)
        model = _required_str(body, "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list.", param="messages",
                           code="missing_required_parameter")
        tools = _tools(body)
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
        max_tokens = _optional_int(body, "max_completion_tokens") or _optional_int(
            body, "max_tokens"
        )
        await self._model_latency()
        result = self.model.generate(
            ModelCall(
                model=model,
                context=segments,
                tools=tools,
                tool_names=function_tool_names(tools, nested=True),
                cache_key=_optional_str(body, "prompt_cache_key") or None,
                max_output_tokens=max_tokens,
                saved_goal=saved_goal if segments[-1].role == "tool" else "",
            )
        )
        self._note_call(request, model, result)
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
        return _json(
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
                "service_tier": "default",
                "system_fingerprint": "fp_offline",
            }
        )

    # ---- responses -------------------------------------------------------------------

    async def create_response(self, request: web.Request) -> web.Response:
        body = await _body(request)
        _no_stream(body)
        model = _required_str(body, "model")
        if "input" not in body:
            raise ApiError(400, "Missing required parameter: 'input'.", param="input",
                           code="missing_required_parameter")
        new_items = input_items(body["input"])
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise bad_request("'instructions' must be a string", "instructions")
        tools = _tools(body)
        conversation: Conversation | None = None
        raw_conversation = body.get("conversation")
        previous_id = _optional_str(body, "previous_response_id")
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
        max_output_tokens = _optional_int(body, "max_output_tokens")
        cache_key = _optional_str(body, "prompt_cache_key") or None
        await self._model_latency()
        result = self.model.generate(
            ModelCall(
                model=model,
                context=[item.segment for item in everything],
                instructions=instructions or "",
                tools=tools,
                tool_names=function_tool_names(tools, nested=False),
                cache_key=cache_key,
                max_output_tokens=max_output_tokens,
                saved_goal=saved_goal_for_output(everything),
            )
        )
        self._note_call(request, model, result)
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
            "temperature": _optional_float(body, "temperature", 1.0),
            "top_p": _optional_float(body, "top_p", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": tools,
            "truncation": body.get("truncation", "disabled"),
            "usage": _responses_usage(result),
            "user": body.get("user"),
            "metadata": _metadata(body),
            "service_tier": "default",
        }
        if response["store"]:
            self.store.remember_response(ResponseRecord(response, everything + output))
        return _json(response)

    async def get_response(self, request: web.Request) -> web.Response:
        return _json(self.store.response(request.match_info["response_id"]).body)

    async def delete_response(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        self.store.response(response_id)
        del self.store.responses[response_id]
        return _json({"id": response_id, "object": "response.deleted", "deleted": True})

    # ---- conversations ---------------------------------------------------------------

    async def create_conversation(self, request: web.Request) -> web.Response:
        body = await _body(request)
        raw_items = body.get("items") or []
        items = input_items(raw_items, "items") if raw_items else []
        conversation = Conversation(new_id("conv"), now(), _metadata(body), items)
        self.store.conversations[conversation.id] = conversation
        return _json(conversation.to_json())

    async def get_conversation(self, request: web.Request) -> web.Response:
        return _json(self.store.conversation(request.match_info["conversation_id"]).to_json())

    async def update_conversation(self, request: web.Request) -> web.Response:
        conversation = self.store.conversation(request.match_info["conversation_id"])
        body = await _body(request)
        if "metadata" not in body:
            raise ApiError(400, "Missing required parameter: 'metadata'.", param="metadata",
                           code="missing_required_parameter")
        conversation.metadata = _metadata(body)
        return _json(conversation.to_json())

    async def delete_conversation(self, request: web.Request) -> web.Response:
        conversation = self.store.conversation(request.match_info["conversation_id"])
        del self.store.conversations[conversation.id]
        return _json({"id": conversation.id, "object": "conversation.deleted", "deleted": True})

    async def create_items(self, request: web.Request) -> web.Response:
        conversation = self.store.conversation(request.match_info["conversation_id"])
        body = await _body(request)
        raw = body.get("items")
        if not isinstance(raw, list) or not raw:
            raise ApiError(400, "'items' must be a non-empty list.", param="items",
                           code="missing_required_parameter")
        items = [input_item(item, f"items[{index}]") for index, item in enumerate(raw)]
        conversation.items.extend(items)
        return _json(
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
        return _json(_page(entries, request.query, default_order="desc"))

    def _find_item(self, request: web.Request) -> tuple[Conversation, int]:
        conversation = self.store.conversation(request.match_info["conversation_id"])
        item_id = request.match_info["item_id"]
        for index, item in enumerate(conversation.items):
            if item.id == item_id:
                return conversation, index
        raise not_found("item", item_id, "item_id")

    async def get_item(self, request: web.Request) -> web.Response:
        conversation, index = self._find_item(request)
        return _json(conversation.items[index].body)

    async def delete_item(self, request: web.Request) -> web.Response:
        conversation, index = self._find_item(request)
        del conversation.items[index]
        return _json(conversation.to_json())

    # ---- assistants ------------------------------------------------------------------

    async def create_assistant(self, request: web.Request) -> web.Response:
        body = await _body(request)
        assistant = {
            "id": new_id("asst"),
            "object": "assistant",
            "created_at": now(),
            "name": body.get("name"),
            "description": body.get("description"),
            "model": _required_str(body, "model"),
            "instructions": _optional_str(body, "instructions") or None,
            "tools": _tools(body),
            "tool_resources": body.get("tool_resources") or {},
            "metadata": _metadata(body),
            "temperature": _optional_float(body, "temperature", 1.0),
            "top_p": _optional_float(body, "top_p", 1.0),
            "response_format": body.get("response_format") or "auto",
        }
        self.store.assistants[str(assistant["id"])] = Assistant(assistant)
        return _json(assistant)

    async def list_assistants(self, request: web.Request) -> web.Response:
        entries = [(key, value.body) for key, value in self.store.assistants.items()]
        return _json(_page(entries, request.query, default_order="desc"))

    async def get_assistant(self, request: web.Request) -> web.Response:
        return _json(self.store.assistant(request.match_info["assistant_id"]).body)

    async def update_assistant(self, request: web.Request) -> web.Response:
        assistant = self.store.assistant(request.match_info["assistant_id"])
        body = await _body(request)
        for name in ("name", "description", "model", "instructions", "tools", "metadata",
                     "temperature", "top_p", "response_format", "tool_resources"):
            if name in body:
                assistant.body[name] = body[name]
        return _json(assistant.body)

    async def delete_assistant(self, request: web.Request) -> web.Response:
        assistant_id = request.match_info["assistant_id"]
        self.store.assistant(assistant_id)
        del self.store.assistants[assistant_id]
        return _json({"id": assistant_id, "object": "assistant.deleted", "deleted": True})

    def _new_message(
        self,
        thread: Thread,
        role: str,
        text: str,
        *,
        metadata: dict[str, Any] | None = None,
        assistant_id: str | None = None,
        run_id: str | None = None,
        status: str = "completed",
    ) -> ThreadMessage:
        created = now()
        body = {
            "id": new_id("msg"),
            "object": "thread.message",
            "created_at": created,
            "thread_id": thread.body["id"],
            "role": role,
            "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
            "assistant_id": assistant_id,
            "run_id": run_id,
            "attachments": [],
            "metadata": metadata or {},
            "status": status,
            "completed_at": created if status == "completed" else None,
            "incomplete_at": created if status == "incomplete" else None,
            "incomplete_details": {"reason": "max_tokens"} if status == "incomplete" else None,
        }
        message = ThreadMessage(body, Segment(role, text))
        thread.messages.append(message)
        return message

    def _add_user_messages(self, thread: Thread, raw: Any, param: str) -> None:
        if raw is None:
            return
        if not isinstance(raw, list):
            raise bad_request(f"'{param}' must be a list", param)
        for index, message in enumerate(raw):
            self._add_message_from(thread, message, f"{param}[{index}]")

    def _add_message_from(self, thread: Thread, raw: Any, param: str) -> ThreadMessage:
        if not isinstance(raw, dict):
            raise bad_request("a message must be an object", param)
        role = raw.get("role")
        if role not in ("user", "assistant"):
            raise bad_request("'role' must be 'user' or 'assistant'", f"{param}.role")
        if "content" not in raw:
            raise ApiError(400, "Missing required parameter: 'content'.",
                           param=f"{param}.content", code="missing_required_parameter")
        text = content_text(raw.get("content"), f"{param}.content")
        return self._new_message(thread, str(role), text, metadata=_metadata(raw))

    async def create_thread(self, request: web.Request) -> web.Response:
        body = await _body(request)
        thread = Thread(
            {
                "id": new_id("thread"),
                "object": "thread",
                "created_at": now(),
                "metadata": _metadata(body),
                "tool_resources": body.get("tool_resources") or {},
            }
        )
        self._add_user_messages(thread, body.get("messages"), "messages")
        self.store.threads[thread.body["id"]] = thread
        return _json(thread.body)

    async def get_thread(self, request: web.Request) -> web.Response:
        return _json(self.store.thread(request.match_info["thread_id"]).body)

    async def update_thread(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        body = await _body(request)
        if "metadata" in body:
            thread.body["metadata"] = _metadata(body)
        return _json(thread.body)

    async def delete_thread(self, request: web.Request) -> web.Response:
        thread_id = request.match_info["thread_id"]
        self.store.thread(thread_id)
        del self.store.threads[thread_id]
        return _json({"id": thread_id, "object": "thread.deleted", "deleted": True})

    def _active_run(self, thread: Thread) -> Run | None:
        for run in thread.runs.values():
            if run.body["status"] in ACTIVE_RUN_STATUSES:
                return run
        return None

    async def create_message(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        body = await _body(request)
        active = self._active_run(thread)
        if active is not None:
            raise bad_request(
                f"Can't add messages to {thread.body['id']} while a run "
                f"{active.body['id']} is active."
            )
        return _json(self._add_message_from(thread, body, "body").body)

    async def list_messages(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        run_id = request.query.get("run_id")
        entries = [
            (m.body["id"], m.body)
            for m in thread.messages
            if not run_id or m.body.get("run_id") == run_id
        ]
        return _json(_page(entries, request.query, default_order="desc"))

    async def get_message(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        message_id = request.match_info["message_id"]
        for message in thread.messages:
            if message.body["id"] == message_id:
                return _json(message.body)
        raise not_found("message", message_id, "message_id")

    # ---- runs ------------------------------------------------------------------------

    async def create_run(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        body = await _body(request)
        _no_stream(body)
        assistant = self.store.assistant(_required_str(body, "assistant_id")).body
        active = self._active_run(thread)
        if active is not None:
            raise bad_request(
                f"Thread {thread.body['id']} already has an active run {active.body['id']}."
            )
        instructions = _optional_str(body, "instructions") or assistant.get("instructions") or ""
        additional = _optional_str(body, "additional_instructions")
        if additional:
            instructions = f"{instructions}\n\n{additional}" if instructions else additional
        tools = body["tools"] if body.get("tools") is not None else assistant.get("tools", [])
        if not isinstance(tools, list):
            raise bad_request("'tools' must be a list", "tools")
        truncation = body.get("truncation_strategy") or {"type": "auto", "last_messages": None}
        if not isinstance(truncation, dict) or truncation.get("type") not in (
            "auto",
            "last_messages",
        ):
            raise bad_request("'truncation_strategy.type' must be 'auto' or 'last_messages'",
                              "truncation_strategy")
        last_messages = truncation.get("last_messages")
        if last_messages is not None and (not isinstance(last_messages, int) or last_messages < 1):
            raise bad_request("'truncation_strategy.last_messages' must be a positive integer",
                              "truncation_strategy.last_messages")
        self._add_user_messages(thread, body.get("additional_messages"), "additional_messages")
        created = now()
        run_body = {
            "id": new_id("run"),
            "object": "thread.run",
            "created_at": created,
            "assistant_id": assistant["id"],
            "thread_id": thread.body["id"],
            "status": "queued",
            "started_at": None,
            "expires_at": created + 600,
            "cancelled_at": None,
            "failed_at": None,
            "completed_at": None,
            "required_action": None,
            "last_error": None,
            "model": _optional_str(body, "model") or assistant["model"],
            "instructions": instructions,
            "tools": tools,
            "metadata": _metadata(body),
            "usage": None,
            "temperature": _optional_float(body, "temperature", assistant.get("temperature")),
            "top_p": _optional_float(body, "top_p", assistant.get("top_p")),
            "max_prompt_tokens": _optional_int(body, "max_prompt_tokens"),
            "max_completion_tokens": _optional_int(body, "max_completion_tokens"),
            "truncation_strategy": {
                "type": truncation["type"],
                "last_messages": last_messages,
            },
            "incomplete_details": None,
            "response_format": body.get("response_format") or "auto",
            "tool_choice": body.get("tool_choice") or "auto",
            "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        }
        run = Run(run_body)
        thread.runs[run_body["id"]] = run
        return _json(run_body)

    async def list_runs(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        entries = [(key, run.body) for key, run in thread.runs.items()]
        return _json(_page(entries, request.query, default_order="desc"))

    async def get_run(self, request: web.Request) -> web.Response:
        thread, run = self.store.run(request.match_info["thread_id"], request.match_info["run_id"])
        result = await self._advance_run(thread, run)
        if result is not None:
            self._note_call(request, run.body["model"], result)
        return _json(run.body, headers={"openai-poll-after-ms": str(self.config.poll_after_ms)})

    async def _advance_run(self, thread: Thread, run: Run) -> ModelResult | None:
        """One step per poll: queued → in_progress → completed / requires_action."""
        body = run.body
        status = body["status"]
        if status == "queued":
            body["status"] = "in_progress"
            body["started_at"] = body["started_at"] or now()
        elif status == "cancelling":
            body["status"] = "cancelled"
            body["cancelled_at"] = now()
        elif status == "in_progress":
            await self._model_latency()
            if body["status"] != "in_progress":  # cancelled while the model "thought"
                return None
            result = self._generate_run_step(thread, run)
            return result
        return None

    def _generate_run_step(self, thread: Thread, run: Run) -> ModelResult:
        body = run.body
        messages = thread.messages
        last_messages = body["truncation_strategy"].get("last_messages")
        if last_messages:
            messages = messages[-last_messages:]
        context = [m.segment for m in messages] + run.tool_segments
        result = self.model.generate(
            ModelCall(
                model=body["model"],
                context=context,
                instructions=body["instructions"] or "",
                tools=body["tools"],
                tool_names=function_tool_names(body["tools"], nested=True),
                max_output_tokens=body["max_completion_tokens"],
                saved_goal=run.saved_goal if run.answering_tool_output else "",
                preamble_allowed=False,
            )
        )
        usage = body["usage"] or {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 0,
            "prompt_token_details": {"cached_tokens": 0},
        }
        usage["prompt_tokens"] += result.input_tokens
        usage["completion_tokens"] += result.output_tokens
        usage["total_tokens"] += result.total_tokens
        usage["prompt_token_details"]["cached_tokens"] += result.cached_tokens
        body["usage"] = usage
        reply = result.reply
        if isinstance(reply, GoalCall):
            call_id = new_id("call")
            run.pending_call_ids = [call_id]
            run.saved_goal = reply.goal
            run.tool_segments.append(Segment("assistant", reply.name + reply.arguments))
            body["status"] = "requires_action"
            body["required_action"] = {
                "type": "submit_tool_outputs",
                "submit_tool_outputs": {
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": reply.name, "arguments": reply.arguments},
                        }
                    ]
                },
            }
            return result
        status = "incomplete" if result.truncated else "completed"
        self._new_message(
            thread,
            "assistant",
            reply.text,
            assistant_id=body["assistant_id"],
            run_id=body["id"],
            status=status,
        )
        body["status"] = status
        if result.truncated:
            body["incomplete_details"] = {"reason": "max_completion_tokens"}
        body["completed_at"] = now()
        return result

    async def submit_tool_outputs(self, request: web.Request) -> web.Response:
        _, run = self.store.run(request.match_info["thread_id"], request.match_info["run_id"])
        body = await _body(request)
        _no_stream(body)
        if run.body["status"] != "requires_action":
            raise bad_request(
                f"Runs in status \"{run.body['status']}\" do not accept tool outputs."
            )
        outputs = body.get("tool_outputs")
        if not isinstance(outputs, list) or not outputs:
            raise ApiError(400, "Missing required parameter: 'tool_outputs'.",
                           param="tool_outputs", code="missing_required_parameter")
        by_id: dict[str, str] = {}
        for index, output in enumerate(outputs):
            if not isinstance(output, dict) or not isinstance(output.get("tool_call_id"), str):
                raise bad_request("each tool output needs a 'tool_call_id'",
                                  f"tool_outputs[{index}]")
            by_id[output["tool_call_id"]] = str(output.get("output", ""))
        missing = [call_id for call_id in run.pending_call_ids if call_id not in by_id]
        if missing:
            raise bad_request(f"Expected tool outputs for call_ids {missing}", "tool_outputs")
        for call_id in run.pending_call_ids:
            run.tool_segments.append(Segment("tool", by_id[call_id]))
        run.pending_call_ids = []
        run.answering_tool_output = True
        run.body["status"] = "queued"
        run.body["required_action"] = None
        return _json(run.body)

    async def cancel_run(self, request: web.Request) -> web.Response:
        _, run = self.store.run(request.match_info["thread_id"], request.match_info["run_id"])
        status = run.body["status"]
        if status not in ("queued", "in_progress", "requires_action"):
            raise bad_request(f"Cannot cancel run with status '{status}'.")
        run.body["status"] = "cancelling"
        run.body["required_action"] = None
        return _json(run.body)

    # ---- models ----------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        data = [self._model_json(name) for name in KNOWN_MODELS]
        return _json({"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.Response:
        return _json(self._model_json(request.match_info["model_id"]))

    @staticmethod
    def _model_json(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "offline"}

    # ---- control ---------------------------------------------------------------------

    async def set_faults(self, request: web.Request) -> web.Response:
        plan = FaultPlan.from_json(await _body(request))
        self.faults.apply(plan)
        log.info("faults set", extra={"event": "faults_set", "fault": plan.to_json()})
        return _json(plan.to_json())

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(self.faults.plan.to_json())

    async def get_stats(self, request: web.Request) -> web.Response:
        return _json(self.stats.snapshot())

    def _clock_json(self) -> dict[str, Any]:
        return {**self.clock.to_json(), "cache_ttl_seconds": self.model.cache.ttl_seconds}

    async def set_clock(self, request: web.Request) -> web.Response:
        """`{"now": <epoch seconds>}`: simulated time from now on; `{"now": null}`: real time."""
        body = await _body(request)
        if "now" not in body:
            raise bad_request("'now' is required (epoch seconds, or null for real time)", "now")
        value = body["now"]
        if value is None:
            self.clock.use_real_time()
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.clock.set(float(value))
        else:
            raise bad_request("'now' must be a number of seconds or null", "now")
        return _json(self._clock_json())

    async def get_clock(self, request: web.Request) -> web.Response:
        return _json(self._clock_json())

    async def reset(self, request: web.Request) -> web.Response:
        """Clear faults, stats, the prompt cache and every stored object; back to real time."""
        self.clock.use_real_time()
        self.faults.clear()
        self.stats.reset()
        self.model.cache.clear()
        self.store.clear()
        return _json({"reset": True})

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})
