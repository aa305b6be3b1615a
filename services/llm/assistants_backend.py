"""Stateful tier on the Assistants API v2: one assistant, one thread per user.

- The assistant is found once and cached: ``COACH_ASSISTANT_ID`` when set;
  else an existing assistant with our name whose metadata carries the hash of
  its definition (model, instructions, no tools); else a new one. Editing the
  persona therefore makes a new assistant instead of silently reusing a stale
  one. The assistant carries no tools: each run names the tools it needs
  (an explicit empty list on most turns, which also overrides an assistant
  configured elsewhere with tools).
- create: ``threads.create`` seeded with the recap and the seed turns.
- append: ``threads.messages.create`` per turn.
- turn: ``messages.create`` (the context line, when it changed, leads the user
  message) + ``runs.create`` (model, tools, ``additional_instructions`` with the
  tool guidance on turns with tools and the crisis guidance on crisis turns,
  ``max_completion_tokens``), polled with
  ``runs.retrieve`` and short growing sleeps within the deadline;
  ``requires_action`` is answered with ``runs.submit_tool_outputs``. A run still
  going at the deadline is cancelled (best effort) so the thread is not left
  locked for the user's next turn.

The SDK marks every Assistants call deprecated; ``_quiet`` silences that
warning here, for these calls only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import openai
from openai.types.beta.threads import Run

from services.common.errors import Unavailable
from services.common.usage import Usage
from services.llm.resilience import MIN_ATTEMPT_S, Clock, Deadline, SystemClock, Upstream
from services.llm.stateful import MAX_TOOL_ROUNDS, RECAP_LABEL, StatefulApi, TurnInput, TurnPlanner
from services.llm.tools import ToolCatalog
from services.llm.turns import Reply, Role, ToolCallRecord, Turn

log = logging.getLogger(__name__)

T = TypeVar("T")

MESSAGES_PER_THREAD_CREATE = 32
RUNNING = frozenset({"queued", "in_progress", "cancelling"})
ANSWERED = frozenset({"completed", "incomplete"})
LIST_PAGES = 5  # assistants.list pages searched for ours (100 each)
CANCEL_BUDGET_S = 5.0


def _quiet(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Calls an Assistants API method without its DeprecationWarning (emitted at call time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return call(*args, **kwargs)


def run_usage(run: Run) -> Usage:
    usage = run.usage
    if usage is None:
        return Usage()
    cached = written = 0
    details = getattr(usage, "prompt_tokens_details", None) or getattr(
        usage, "prompt_token_details", None
    )
    if isinstance(details, dict):
        cached = int(details.get("cached_tokens") or 0)
        written = int(details.get("cache_write_tokens") or 0)
    elif details is not None:
        cached = int(getattr(details, "cached_tokens", 0) or 0)
        written = int(getattr(details, "cache_write_tokens", 0) or 0)
    truncated = run.status == "incomplete"
    return Usage(usage.prompt_tokens, cached, usage.completion_tokens, 0,
                 cache_write_tokens=written, truncated=truncated)


def definition_hash(model: str, instructions: str) -> str:
    definition = {"model": model, "instructions": instructions, "tools": []}
    blob = json.dumps(definition, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


class AssistantsBackend:
    api = StatefulApi.ASSISTANTS

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        upstream: Upstream,
        planner: TurnPlanner,
        *,
        default_model: str,
        assistant_id: str | None,
        assistant_name: str,
        poll_s: float,
        poll_max_s: float,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.planner = planner
        self.default_model = default_model
        self.assistant_id = assistant_id
        self.assistant_name = assistant_name
        self.poll_s = poll_s
        self.poll_max_s = poll_max_s
        self.clock = clock or SystemClock()
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        # Threads whose abandoned run is being cancelled: a thread takes no new message until
        # its run has left "cancelling", so the next turn on it waits for the cancel first.
        self._cancelling: dict[str, asyncio.Task[None]] = {}

    # -- the assistant ----------------------------------------------------------------

    async def ensure_assistant(self, deadline: Deadline) -> str:
        if self.assistant_id:
            return self.assistant_id
        async with self._lock:
            if self.assistant_id:
                return self.assistant_id
            digest = definition_hash(self.default_model, self.planner.persona.coach)
            found = await self._find_assistant(digest, deadline)
            if found is None:
                found = await self._create_assistant(digest, deadline)
                log.info("assistant created", extra={"assistant_id": found})
            else:
                log.info("assistant reused", extra={"assistant_id": found})
            self.assistant_id = found
            return found

    async def _find_assistant(self, digest: str, deadline: Deadline) -> str | None:
        after: str | None = None
        for _ in range(LIST_PAGES):
            async def page(timeout: float, after: str | None = after) -> Any:
                kwargs: dict[str, Any] = {"limit": 100, "order": "desc", "timeout": timeout}
                if after:
                    kwargs["after"] = after
                return await _quiet(self.client.beta.assistants.list, **kwargs)

            listing = await self.upstream.call("assistants.list", page, deadline)
            for assistant in listing.data:
                metadata = assistant.metadata or {}
                if assistant.name == self.assistant_name and metadata.get("coach_definition") == digest:
                    return str(assistant.id)
            if not listing.data or not getattr(listing, "has_more", False):
                return None
            after = listing.data[-1].id
        return None

    async def _create_assistant(self, digest: str, deadline: Deadline) -> str:
        async def create(timeout: float) -> str:
            assistant = await _quiet(
                self.client.beta.assistants.create,
                model=self.default_model,
                name=self.assistant_name,
                instructions=self.planner.persona.coach,
                tools=[],
                metadata={"coach_definition": digest, "coach_suite": "llm"},
                timeout=timeout,
            )
            return str(assistant.id)

        return await self.upstream.call("assistants.create", create, deadline)

    # -- threads ------------------------------------------------------------------------

    async def create_conversation(
        self, user_id: str, summary: str, seed_turns: Sequence[Turn], deadline: Deadline
    ) -> str:
        messages: list[dict[str, Any]] = []
        if summary.strip():
            messages.append({"role": "assistant", "content": f"{RECAP_LABEL}\n{summary.strip()}"})
        messages.extend({"role": _role(t), "content": t.text} for t in seed_turns)
        first, rest = messages[:MESSAGES_PER_THREAD_CREATE], messages[MESSAGES_PER_THREAD_CREATE:]

        async def create(timeout: float) -> str:
            thread = await _quiet(
                self.client.beta.threads.create,
                messages=first,
                metadata={"coach_user": user_id[:512]},
                timeout=timeout,
            )
            return str(thread.id)

        thread_id = await self.upstream.call("threads.create", create, deadline)
        for message in rest:
            await self._add_message(thread_id, message["role"], message["content"], deadline)
        return thread_id

    async def _add_message(self, thread_id: str, role: str, text: str, deadline: Deadline) -> None:
        pending = self._cancelling.get(thread_id)
        if pending is not None:
            # Bounded by the caller's deadline; past it the add below fails as the upstream says.
            await asyncio.wait({pending}, timeout=max(0.0, deadline.remaining() - MIN_ATTEMPT_S))

        async def add(timeout: float) -> None:
            await _quiet(
                self.client.beta.threads.messages.create,
                thread_id, role=role, content=text, timeout=timeout,
            )

        await self.upstream.call("threads.messages.create", add, deadline, retry_timeouts=False)

    async def append_turns(
        self, conversation_id: str, turns: Sequence[Turn], deadline: Deadline
    ) -> int:
        for turn in turns:
            await self._add_message(conversation_id, _role(turn), turn.text, deadline)
        return len(turns)

    async def delete_conversation(self, conversation_id: str, deadline: Deadline) -> bool:
        async def delete(timeout: float) -> bool:
            try:
                await _quiet(self.client.beta.threads.delete, conversation_id, timeout=timeout)
            except openai.NotFoundError:
                return False
            return True

        return await self.upstream.call("threads.delete", delete, deadline)

    # -- one turn -----------------------------------------------------------------------

    async def stateful_turn(self, turn: TurnInput, deadline: Deadline) -> Reply:
        assistant_id = await self.ensure_assistant(deadline)
        plan = self.planner.plan(turn, reply_with_calls=False)
        thread_id = turn.conversation_id
        if turn.prior:  # a thread takes messages one call each, before the run
            await self.append_turns(thread_id, turn.prior, deadline)
        text = turn.message if not plan.context_line else f"{plan.context_line}\n\n{turn.message}"
        await self._add_message(thread_id, "user", text, deadline)
        self.planner.sent(turn)

        model = turn.generation.model or self.default_model
        params: dict[str, Any] = {
            "assistant_id": assistant_id,
            "model": model,
            "tools": ToolCatalog.chat_format(plan.tools),  # explicit: [] means none
            "max_completion_tokens": turn.generation.max_output_tokens,
        }
        if plan.additional_instructions:
            params["additional_instructions"] = plan.additional_instructions
        if turn.generation.sends_temperature:
            params["temperature"] = turn.generation.temperature

        async def start(timeout: float) -> Run:
            run: Run = await _quiet(
                self.client.beta.threads.runs.create, thread_id, timeout=timeout, **params
            )
            return run

        run = await self.upstream.call("runs.create", start, deadline, retry_timeouts=False)
        records: list[ToolCallRecord] = []
        try:
            run = await self._finish(run, turn, records, deadline)
        except BaseException:
            self._cancel(thread_id, run.id)
            raise
        if run.status not in ANSWERED:
            detail = run.last_error.message if run.last_error else run.status
            raise Unavailable(
                f"the assistants run ended {run.status}: {detail}",
                reason="UPSTREAM_RUN_FAILED",
                metadata={"upstream": self.upstream.name, "run_status": run.status},
            )
        texts = await self._run_texts(thread_id, run.id, deadline)
        return Reply(
            texts=tuple(texts),
            model=run.model or model,
            usage=run_usage(run),
            tool_calls=tuple(records),
            response_id=run.id,
        )

    async def _finish(
        self, run: Run, turn: TurnInput, records: list[ToolCallRecord], deadline: Deadline
    ) -> Run:
        """Polls to a terminal state, answering function calls on the way."""
        interval = self.poll_s
        rounds = 0
        while True:
            if run.status in RUNNING:
                if deadline.remaining() < interval + MIN_ATTEMPT_S:
                    raise Unavailable(
                        "the assistants run did not finish before the caller's deadline",
                        reason="UPSTREAM_TIMEOUT",
                        metadata={"upstream": self.upstream.name, "run_status": run.status},
                    )
                await self.clock.sleep(interval)
                interval = min(interval * 1.5, self.poll_max_s)
                run = await self._retrieve(run, deadline)
                continue
            if run.status == "requires_action" and run.required_action is not None:
                rounds += 1
                outputs = []
                for call in run.required_action.submit_tool_outputs.tool_calls:
                    if rounds > MAX_TOOL_ROUNDS:
                        output = json.dumps({"ok": False, "error": "too many function calls"})
                    else:
                        output = self.planner.catalog.run(
                            call.function.name, call.function.arguments, turn.audience
                        )
                        records.append(
                            ToolCallRecord(call.function.name, call.function.arguments, output)
                        )
                    outputs.append({"tool_call_id": call.id, "output": output})
                run = await self._submit(run, outputs, deadline)
                interval = self.poll_s
                continue
            return run

    async def _retrieve(self, run: Run, deadline: Deadline) -> Run:
        async def retrieve(timeout: float) -> Run:
            found: Run = await _quiet(
                self.client.beta.threads.runs.retrieve, run.id, thread_id=run.thread_id,
                timeout=timeout,
            )
            return found

        return await self.upstream.call("runs.retrieve", retrieve, deadline)

    async def _submit(self, run: Run, outputs: list[dict[str, str]], deadline: Deadline) -> Run:
        async def submit(timeout: float) -> Run:
            submitted: Run = await _quiet(
                self.client.beta.threads.runs.submit_tool_outputs,
                run.id, thread_id=run.thread_id, tool_outputs=outputs, timeout=timeout,
            )
            return submitted

        return await self.upstream.call("runs.submit_tool_outputs", submit, deadline,
                                        retry_timeouts=False)

    async def _run_texts(self, thread_id: str, run_id: str, deadline: Deadline) -> list[str]:
        async def listing(timeout: float) -> list[str]:
            page = await _quiet(
                self.client.beta.threads.messages.list,
                thread_id, run_id=run_id, order="asc", limit=20, timeout=timeout,
            )
            texts: list[str] = []
            for message in page.data:
                if message.role != "assistant":
                    continue
                parts = [block.text.value for block in message.content if block.type == "text"]
                text = "".join(parts).strip()
                if text:
                    texts.append(text)
            return texts

        return await self.upstream.call("threads.messages.list", listing, deadline)

    def _cancel(self, thread_id: str, run_id: str) -> None:
        async def cancel() -> None:
            deadline = Deadline.after(SystemClock(), CANCEL_BUDGET_S)

            async def attempt(timeout: float) -> Run:
                run: Run = await _quiet(self.client.beta.threads.runs.cancel, run_id,
                                        thread_id=thread_id, timeout=timeout)
                return run

            try:
                run = await self.upstream.call("runs.cancel", attempt, deadline)
                # Wait for "cancelled": until then the thread takes no new message.
                while run.status == "cancelling" and deadline.remaining() > self.poll_max_s:
                    await self.clock.sleep(self.poll_s)
                    run = await self._retrieve(run, deadline)
            except Exception as exc:  # noqa: BLE001 - best effort; logged
                log.warning("could not cancel an abandoned run",
                            extra={"thread_id": thread_id, "run_id": run_id, "error": str(exc)})

        task = asyncio.get_running_loop().create_task(cancel())
        self._background.add(task)
        self._cancelling[thread_id] = task

        def settled(done: asyncio.Task[None]) -> None:
            self._background.discard(done)
            if self._cancelling.get(thread_id) is done:
                del self._cancelling[thread_id]

        task.add_done_callback(settled)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _role(turn: Turn) -> str:
    return "user" if turn.role is Role.USER else "assistant"
