"""Stateful tier on the Responses API, one Conversations API conversation per user.

- create: ``conversations.create`` seeded with the recap (a developer message)
  and the seed turns (user / assistant messages), 20 items per request.
- append: ``conversations.items.create`` for turns answered elsewhere.
- turn: ``responses.create(conversation=..., input=[context?, safety?, user
  message], instructions=persona (+ the tool guidance when the turn carries
  tools), tools only when needed, prompt_cache_key,
  max_output_tokens, store=True)``; each function call the model makes is run
  and answered with a follow-up ``responses.create`` whose input is the
  ``function_call_output`` items, in the same conversation. When the response
  already carries the reply and its calls only record (``records`` tools: the
  model wrote its reply with the call, as the tool guidance asks), the outputs
  are added with ``conversations.items.create`` instead: one model call for the
  turn, not two (the follow-up would resend the whole context to say the same).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import openai
from openai.types.responses import Response, ResponseFunctionToolCall

from services.common.usage import Usage
from services.llm.caching import CachePolicy
from services.llm.resilience import Deadline, SystemClock, Upstream
from services.llm.stateful import (
    MAX_TOOL_ROUNDS,
    RECAP_LABEL,
    StatefulApi,
    TurnInput,
    TurnPlanner,
)
from services.llm.tools import ToolCatalog
from services.llm.turns import Reply, Role, ToolCallRecord, Turn
from services.llm.upstream import add_conversation_items, create_conversation, create_response
from services.llm.verbosity import VerbosityPolicy

log = logging.getLogger(__name__)

ITEMS_PER_REQUEST = 20  # the Conversations API's limit
MIN_OUTPUT_TOKENS = 16  # the Responses API's minimum max_output_tokens
HEAL_BUDGET_S = 5.0


def message_item(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": text}


def turn_item(turn: Turn) -> dict[str, Any]:
    return message_item("user" if turn.role is Role.USER else "assistant", turn.text)


def response_usage(response: Response) -> Usage:
    """Usage as reported, with cache writes (input_tokens_details.cache_write_tokens, which
    the SDK keeps as an extra field), the tier the response reports and whether
    max_output_tokens cut it off (status "incomplete")."""
    tier = response.service_tier if isinstance(response.service_tier, str) else ""
    details = response.incomplete_details
    truncated = response.status == "incomplete" and (
        details is None or details.reason in (None, "max_output_tokens")
    )
    usage = response.usage
    if usage is None:
        return Usage(service_tier=tier, truncated=truncated)
    input_details = usage.input_tokens_details
    cached = input_details.cached_tokens if input_details else 0
    written = getattr(input_details, "cache_write_tokens", 0) if input_details else 0
    reasoning = usage.output_tokens_details.reasoning_tokens if usage.output_tokens_details else 0
    return Usage(usage.input_tokens, cached or 0, usage.output_tokens, reasoning or 0,
                 cache_write_tokens=written if isinstance(written, int) else 0,
                 service_tier=tier, truncated=truncated)


def response_texts(response: Response) -> list[str]:
    texts: list[str] = []
    for item in response.output:
        if item.type != "message":
            continue
        parts = [c.text for c in item.content if c.type == "output_text"]
        text = "".join(parts).strip()
        if text:
            texts.append(text)
    return texts


def function_calls(response: Response) -> list[ResponseFunctionToolCall]:
    return [item for item in response.output if isinstance(item, ResponseFunctionToolCall)]


class ResponsesBackend:
    api = StatefulApi.RESPONSES

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        upstream: Upstream,
        planner: TurnPlanner,
        *,
        default_model: str,
        verbosity: VerbosityPolicy | None = None,
        caching: CachePolicy | None = None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.planner = planner
        self.default_model = default_model
        self.verbosity = verbosity or VerbosityPolicy()
        self.caching = caching or CachePolicy()
        self._background: set[asyncio.Task[None]] = set()

    async def create_conversation(
        self, user_id: str, summary: str, seed_turns: Sequence[Turn], deadline: Deadline
    ) -> str:
        items: list[dict[str, Any]] = []
        if summary.strip():
            items.append(message_item("developer", f"{RECAP_LABEL}\n{summary.strip()}"))
        items.extend(turn_item(turn) for turn in seed_turns)
        first, rest = items[:ITEMS_PER_REQUEST], items[ITEMS_PER_REQUEST:]

        async def create(timeout: float) -> str:
            return await create_conversation(
                self.client, {"items": first, "metadata": {"coach_user": user_id[:512]}},
                timeout)

        conversation_id = await self.upstream.call("conversations.create", create, deadline)
        await self._add_items(conversation_id, rest, deadline)
        return conversation_id

    async def _add_items(
        self, conversation_id: str, items: Sequence[dict[str, Any]], deadline: Deadline
    ) -> None:
        for start in range(0, len(items), ITEMS_PER_REQUEST):
            chunk = list(items[start:start + ITEMS_PER_REQUEST])

            async def add(timeout: float, chunk: list[dict[str, Any]] = chunk) -> None:
                await add_conversation_items(self.client, conversation_id, chunk, timeout)

            await self.upstream.call("conversations.items.create", add, deadline,
                                     retry_timeouts=False)

    async def append_turns(
        self, conversation_id: str, turns: Sequence[Turn], deadline: Deadline
    ) -> int:
        await self._add_items(conversation_id, [turn_item(t) for t in turns], deadline)
        return len(turns)

    async def delete_conversation(self, conversation_id: str, deadline: Deadline) -> bool:
        async def delete(timeout: float) -> bool:
            try:
                await self.client.conversations.delete(conversation_id, timeout=timeout)
            except openai.NotFoundError:
                return False
            return True

        return await self.upstream.call("conversations.delete", delete, deadline)

    async def stateful_turn(self, turn: TurnInput, deadline: Deadline) -> Reply:
        plan = self.planner.plan(turn, stable_tools=self.caching.stable_tools)
        model = turn.generation.model or self.default_model
        params: dict[str, Any] = {
            "model": model,
            "conversation": turn.conversation_id,
            "instructions": plan.instructions,
            "prompt_cache_key": plan.cache_key,
            "max_output_tokens": max(turn.generation.max_output_tokens, MIN_OUTPUT_TOKENS),
            "store": True,
        }
        if plan.tools:
            params["tools"] = ToolCatalog.responses_format(plan.tools)
            if plan.allowed is not None:
                params["tool_choice"] = ToolCatalog.allowed_format(plan.allowed)
        if turn.generation.sends_temperature:
            params["temperature"] = turn.generation.temperature
        verbosity = self.verbosity.for_turn(model, turn.generation.message_type)
        if verbosity:
            params["text"] = {"verbosity": verbosity}
        retention = self.caching.retention_for("stateful", model)
        if retention:
            params["prompt_cache_retention"] = retention
        # Unseen turns first, as a separate items call would have added them: one upstream
        # call instead of two.
        inputs: list[dict[str, Any]] = [turn_item(t) for t in turn.prior]
        if plan.context_line:
            inputs.append(message_item("developer", plan.context_line))
        if plan.safety:
            inputs.append(message_item("developer", plan.safety))
        inputs.append(message_item("user", turn.message))

        response = await self._respond(params, inputs, deadline)
        self.planner.sent(turn)
        usages = [response_usage(response)]
        records: list[ToolCallRecord] = []
        rounds = 0
        while calls := function_calls(response):
            rounds += 1
            outputs = []
            for call in calls:
                output = self.planner.catalog.run(call.name, call.arguments, turn.audience)
                records.append(ToolCallRecord(call.name, call.arguments, output))
                outputs.append(
                    {"type": "function_call_output", "call_id": call.call_id, "output": output}
                )
            if response_texts(response) and self.planner.catalog.records_only(
                [call.name for call in calls]
            ):
                await self._answer_calls(turn.conversation_id, outputs, deadline)
                break
            follow_up = dict(params)
            if rounds >= MAX_TOOL_ROUNDS:
                follow_up["tool_choice"] = "none"  # answer in words now
            try:
                response = await self._respond(follow_up, outputs, deadline)
            except BaseException:
                # Leave no function call unanswered in the conversation, or the
                # user's next turn would be rejected.
                self._heal(turn.conversation_id, outputs)
                raise
            usages.append(response_usage(response))
            if rounds >= MAX_TOOL_ROUNDS:
                break
        return Reply(
            texts=tuple(response_texts(response)),
            model=response.model or model,
            usage=Usage.total(usages),
            tool_calls=tuple(records),
            response_id=response.id,
        )

    async def _respond(
        self, params: dict[str, Any], inputs: list[dict[str, Any]], deadline: Deadline
    ) -> Response:
        async def create(timeout: float) -> Response:
            return await create_response(self.client, {**params, "input": inputs}, timeout)

        return await self.upstream.call("responses.create", create, deadline, retry_timeouts=False)

    async def _answer_calls(
        self, conversation_id: str, outputs: list[dict[str, Any]], deadline: Deadline
    ) -> None:
        """Adds the outputs of calls the model already replied with. The reply stands if
        this fails (it is written and paid for): the outputs are then added in the
        background, as after a failed follow-up."""
        try:
            await self._add_items(conversation_id, outputs, deadline)
        except asyncio.CancelledError:
            self._heal(conversation_id, outputs)
            raise
        except Exception as exc:  # noqa: BLE001 - retried in the background (logged there)
            log.info("function outputs not added yet: adding them in the background",
                     extra={"conversation_id": conversation_id, "error": str(exc)})
            self._heal(conversation_id, outputs)

    def _heal(self, conversation_id: str, outputs: list[dict[str, Any]]) -> None:
        async def heal() -> None:
            deadline = Deadline.after(SystemClock(), HEAL_BUDGET_S)
            try:
                await self._add_items(conversation_id, outputs, deadline)
            except Exception as exc:  # noqa: BLE001 - best effort; logged
                log.warning("could not answer pending function calls",
                            extra={"conversation_id": conversation_id, "error": str(exc)})

        task = asyncio.get_running_loop().create_task(heal())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
