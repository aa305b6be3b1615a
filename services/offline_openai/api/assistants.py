"""The Assistants API v2: assistants, threads, messages and runs (polled)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import ApiError, bad_request, not_found
from ..generation import ModelCall, ModelResult
from ..items import content_text, function_tool_names
from ..replies import GoalCall
from ..store import Assistant, Run, Thread, ThreadMessage, new_id, now
from ..tokens import Segment
from .http import (
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

ACTIVE_RUN_STATUSES = frozenset({"queued", "in_progress", "requires_action", "cancelling"})


class AssistantsRoutes(Routes):
    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/assistants", self.create_assistant)
        router.add_get("/v1/assistants", self.list_assistants)
        router.add_get("/v1/assistants/{assistant_id}", self.get_assistant)
        router.add_post("/v1/assistants/{assistant_id}", self.update_assistant)
        router.add_delete("/v1/assistants/{assistant_id}", self.delete_assistant)
        router.add_post("/v1/threads", self.create_thread)
        router.add_get("/v1/threads/{thread_id}", self.get_thread)
        router.add_post("/v1/threads/{thread_id}", self.update_thread)
        router.add_delete("/v1/threads/{thread_id}", self.delete_thread)
        router.add_post("/v1/threads/{thread_id}/messages", self.create_message)
        router.add_get("/v1/threads/{thread_id}/messages", self.list_messages)
        router.add_get("/v1/threads/{thread_id}/messages/{message_id}", self.get_message)
        router.add_post("/v1/threads/{thread_id}/runs", self.create_run)
        router.add_get("/v1/threads/{thread_id}/runs", self.list_runs)
        router.add_get("/v1/threads/{thread_id}/runs/{run_id}", self.get_run)
        router.add_post(
            "/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", self.submit_tool_outputs
        )
        router.add_post("/v1/threads/{thread_id}/runs/{run_id}/cancel", self.cancel_run)


    # ---- assistants ------------------------------------------------------------------

    async def create_assistant(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        assistant = {
            "id": new_id("asst"),
            "object": "assistant",
            "created_at": now(),
            "name": body.get("name"),
            "description": body.get("description"),
            "model": required_str(body, "model"),
            "instructions": optional_str(body, "instructions") or None,
            "tools": tools_param(body),
            "tool_resources": body.get("tool_resources") or {},
            "metadata": metadata_param(body),
            "temperature": optional_float(body, "temperature", 1.0),
            "top_p": optional_float(body, "top_p", 1.0),
            "response_format": body.get("response_format") or "auto",
        }
        self.store.assistants[str(assistant["id"])] = Assistant(assistant)
        return respond(assistant)

    async def list_assistants(self, request: web.Request) -> web.Response:
        entries = [(key, value.body) for key, value in self.store.assistants.items()]
        return respond(page(entries, request.query, default_order="desc"))

    async def get_assistant(self, request: web.Request) -> web.Response:
        return respond(self.store.assistant(request.match_info["assistant_id"]).body)

    async def update_assistant(self, request: web.Request) -> web.Response:
        assistant = self.store.assistant(request.match_info["assistant_id"])
        body = await read_body(request)
        for name in ("name", "description", "model", "instructions", "tools", "metadata",
                     "temperature", "top_p", "response_format", "tool_resources"):
            if name in body:
                assistant.body[name] = body[name]
        return respond(assistant.body)

    async def delete_assistant(self, request: web.Request) -> web.Response:
        assistant_id = request.match_info["assistant_id"]
        self.store.assistant(assistant_id)
        del self.store.assistants[assistant_id]
        return respond({"id": assistant_id, "object": "assistant.deleted", "deleted": True})

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
        return self._new_message(thread, str(role), text, metadata=metadata_param(raw))

    async def create_thread(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        thread = Thread(
            {
                "id": new_id("thread"),
                "object": "thread",
                "created_at": now(),
                "metadata": metadata_param(body),
                "tool_resources": body.get("tool_resources") or {},
            }
        )
        self._add_user_messages(thread, body.get("messages"), "messages")
        self.store.threads[thread.body["id"]] = thread
        return respond(thread.body)

    async def get_thread(self, request: web.Request) -> web.Response:
        return respond(self.store.thread(request.match_info["thread_id"]).body)

    async def update_thread(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        body = await read_body(request)
        if "metadata" in body:
            thread.body["metadata"] = metadata_param(body)
        return respond(thread.body)

    async def delete_thread(self, request: web.Request) -> web.Response:
        thread_id = request.match_info["thread_id"]
        self.store.thread(thread_id)
        del self.store.threads[thread_id]
        return respond({"id": thread_id, "object": "thread.deleted", "deleted": True})

    def _active_run(self, thread: Thread) -> Run | None:
        for run in thread.runs.values():
            if run.body["status"] in ACTIVE_RUN_STATUSES:
                return run
        return None

    async def create_message(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        body = await read_body(request)
        active = self._active_run(thread)
        if active is not None:
            raise bad_request(
                f"Can't add messages to {thread.body['id']} while a run "
                f"{active.body['id']} is active."
            )
        return respond(self._add_message_from(thread, body, "body").body)

    async def list_messages(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        run_id = request.query.get("run_id")
        entries = [
            (m.body["id"], m.body)
            for m in thread.messages
            if not run_id or m.body.get("run_id") == run_id
        ]
        return respond(page(entries, request.query, default_order="desc"))

    async def get_message(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        message_id = request.match_info["message_id"]
        for message in thread.messages:
            if message.body["id"] == message_id:
                return respond(message.body)
        raise not_found("message", message_id, "message_id")

    # ---- runs ------------------------------------------------------------------------

    async def create_run(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        body = await read_body(request)
        no_stream(body)
        assistant = self.store.assistant(required_str(body, "assistant_id")).body
        active = self._active_run(thread)
        if active is not None:
            raise bad_request(
                f"Thread {thread.body['id']} already has an active run {active.body['id']}."
            )
        instructions = optional_str(body, "instructions") or assistant.get("instructions") or ""
        additional = optional_str(body, "additional_instructions")
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
            "model": optional_str(body, "model") or assistant["model"],
            "instructions": instructions,
            "tools": tools,
            "metadata": metadata_param(body),
            "usage": None,
            "temperature": optional_float(body, "temperature", assistant.get("temperature")),
            "top_p": optional_float(body, "top_p", assistant.get("top_p")),
            "max_prompt_tokens": optional_int(body, "max_prompt_tokens"),
            "max_completion_tokens": optional_int(body, "max_completion_tokens"),
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
        return respond(run_body)

    async def list_runs(self, request: web.Request) -> web.Response:
        thread = self.store.thread(request.match_info["thread_id"])
        entries = [(key, run.body) for key, run in thread.runs.items()]
        return respond(page(entries, request.query, default_order="desc"))

    async def get_run(self, request: web.Request) -> web.Response:
        thread, run = self.store.run(request.match_info["thread_id"], request.match_info["run_id"])
        result = await self._advance_run(thread, run)
        if result is not None:
            note_call(request, run.body["model"], result)
        return respond(run.body, headers={"openai-poll-after-ms": str(self.config.poll_after_ms)})

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
        body = await read_body(request)
        no_stream(body)
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
        return respond(run.body)

    async def cancel_run(self, request: web.Request) -> web.Response:
        _, run = self.store.run(request.match_info["thread_id"], request.match_info["run_id"])
        status = run.body["status"]
        if status not in ("queued", "in_progress", "requires_action"):
            raise bad_request(f"Cannot cancel run with status '{status}'.")
        run.body["status"] = "cancelling"
        run.body["required_action"] = None
        return respond(run.body)
