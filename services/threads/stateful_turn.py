"""One stateful turn for a user: serialized, continuity back-filled, pruned, stored.

Per user, turns never overlap: an in-process asyncio lock, then a PostgreSQL
session advisory lock held on the turn's own connection, so several replicas
serialize too. Inside the lock the request id is checked again: a retry gets
the stored exchange back and the upstream is not called twice.

If an llm call fails, its error goes back to the caller as is and no exchange
is stored; the router answers with a fallback and records that instead. Upkeep
already paid for (a summary) is left as a pending charge, taken by the next
exchange stored for the user (the fallback for this very request).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import asyncpg

from services.common.errors import FailedPrecondition
from services.threads.history import History
from services.threads.ports import ConversationProvider, TurnSettings
from services.threads.pruning import (
    MAX_TURNS_PER_CALL,
    PruneSettings,
    plan_continuity,
    plan_rotation,
    summary_batches,
)
from services.threads.records import (
    ROUTE_ASSISTANT,
    Charge,
    Conversation,
    Exchange,
    GoalSaved,
    HistoryMessage,
    StoredExchange,
    ToolCall,
)
from services.threads.repository import ConversationConflict, ThreadsRepository
from services.threads.user_locks import UserLocks

log = logging.getLogger(__name__)

# The baseline policy never prunes and never summarizes: it back-fills every
# unseen message (in calls of at most APPEND_BATCH) and seeds a first
# conversation with the last BASELINE_SEED_LIMIT messages (one call's worth).
BASELINE_BACKFILL_LIMIT = 2000
BASELINE_SEED_LIMIT = MAX_TURNS_PER_CALL
APPEND_BATCH = MAX_TURNS_PER_CALL

SAVE_GOAL_TOOL = "save_goal"


@dataclass(frozen=True)
class StatefulTurnRequest:
    request_id: str
    user_id: str
    message: str
    message_type: str
    settings: TurnSettings
    baseline: bool


def goals_from_tool_calls(calls: tuple[ToolCall, ...]) -> tuple[GoalSaved, ...]:
    """What the save_goal tool saved, from the arguments the model called it with."""
    goals: list[GoalSaved] = []
    for call in calls:
        if call.name != SAVE_GOAL_TOOL:
            continue
        try:
            arguments = json.loads(call.arguments_json or "{}")
        except ValueError:
            log.warning("save_goal arguments are not JSON", extra={"arguments": call.arguments_json})
            continue
        if not isinstance(arguments, dict):
            continue
        goal = next((str(arguments[k]) for k in ("goal", "goal_text", "description", "title")
                     if arguments.get(k)), "")
        deadline = next((str(arguments[k]) for k in ("deadline", "target_date", "due_date", "by")
                         if arguments.get(k)), "")
        if goal:
            goals.append(GoalSaved(goal=goal, deadline=deadline, arguments=arguments))
    return tuple(goals)


class StatefulTurns:
    def __init__(
        self,
        repository: ThreadsRepository,
        history: History,
        provider: ConversationProvider,
        *,
        api: str,
        prune: PruneSettings,
        summary_model: str,
    ) -> None:
        self.repository = repository
        self.history = history
        self.provider = provider
        self.api = api
        self.prune = prune
        self.summary_model = summary_model
        self.locks = UserLocks()

    async def run(self, request: StatefulTurnRequest) -> StoredExchange:
        started = time.monotonic()
        stored = await self._already_answered(request)
        if stored is not None:
            return stored
        async with (
            self.locks.hold(request.user_id),
            self.repository.user_turn_lock(request.user_id) as conn,
        ):
            stored = await self._already_answered(request, conn)
            if stored is not None:
                return stored
            conversation = await self._prepare_conversation(conn, request)
            reply = await self.provider.stateful_turn(
                request_id=request.request_id,
                user_id=request.user_id,
                conversation_id=conversation.provider_conversation_id,
                api=conversation.api,
                message=request.message,
                settings=request.settings,
            )
            exchange = Exchange(
                request_id=request.request_id,
                user_id=request.user_id,
                user_text=request.message,
                coach_texts=reply.texts,
                route=ROUTE_ASSISTANT,
                message_type=request.message_type,
                model=reply.model,
                charges=(Charge(reply.model, reply.usage, "answer"),),
                conversation_id=conversation.provider_conversation_id,
                latency_ms=int((time.monotonic() - started) * 1000),
            )
            new = self.history.prepare(
                exchange,
                goals=goals_from_tool_calls(reply.tool_calls),
                conversation_pk=conversation.id,
            )
            stored = await self.repository.store_exchange(new, conn)
        if stored.created:
            self.history.on_stored()
        log.info(
            "stateful turn",
            extra={
                "user_id": request.user_id,
                "model": reply.model,
                "conversation_id": conversation.provider_conversation_id,
                "input_tokens": reply.usage.input_tokens,
                "cached_input_tokens": reply.usage.cached_input_tokens,
                "output_tokens": reply.usage.output_tokens,
                "held_messages": conversation.held_messages + 2,
                "latency_ms": stored.exchange.latency_ms,
            },
        )
        return stored

    async def _already_answered(
        self, request: StatefulTurnRequest, conn: asyncpg.Connection | None = None
    ) -> StoredExchange | None:
        existing = await self.repository.get_exchange(request.request_id, conn)
        if existing is None:
            return None
        if existing.user_id != request.user_id:
            raise FailedPrecondition(
                "request_id was already used for another user", reason="REQUEST_ID_REUSED"
            )
        return StoredExchange(existing, created=False)

    async def _prepare_conversation(
        self, conn: asyncpg.Connection, request: StatefulTurnRequest
    ) -> Conversation:
        """The active conversation, with every unseen message in it, rotated when due."""
        conversation = await self.repository.active_conversation(conn, request.user_id)
        unseen: list[HistoryMessage] = []
        if conversation is not None:
            limit = BASELINE_BACKFILL_LIMIT if request.baseline else self.prune.keep_messages + 1
            unseen = await self.repository.unseen_messages(conn, conversation, limit)
        plan = plan_continuity(
            conversation, unseen, api=self.api, settings=self.prune, baseline=request.baseline
        )
        if plan.rotate:
            return await self._rotate(conn, conversation, request, plan.reason)
        assert conversation is not None
        appended = 0
        for start in range(0, len(plan.append), APPEND_BATCH):
            batch = plan.append[start : start + APPEND_BATCH]
            await self.provider.append_turns(
                request_id=f"{request.request_id}:append:{batch[-1].id}",
                conversation_id=conversation.provider_conversation_id,
                api=conversation.api,
                turns=[m.turn() for m in batch],
            )
            await self.repository.mark_appended(conn, conversation.id, batch[-1].id, len(batch))
            appended += len(batch)
        if appended:
            log.info("continuity back-filled", extra={
                "user_id": request.user_id, "appended": appended,
                "conversation_id": conversation.provider_conversation_id})
            refreshed = await self.repository.active_conversation(conn, request.user_id)
            assert refreshed is not None
            return refreshed
        return conversation

    async def _rotate(
        self,
        conn: asyncpg.Connection,
        old: Conversation | None,
        request: StatefulTurnRequest,
        reason: str,
    ) -> Conversation:
        """Folds what falls out of the window into the summary, then swaps in a new
        provider conversation seeded with summary + the last N messages.

        Crash-safe: until the final transaction the old mapping stays active, so
        a failure anywhere leaves the user exactly one active conversation and
        the next turn retries (a provider conversation created meanwhile is
        orphaned and logged). The summary is saved as it is written, so a retry
        only folds in what is new.
        """
        keep = BASELINE_SEED_LIMIT if request.baseline else self.prune.keep_messages
        recent = await self.repository.recent_messages(conn, request.user_id, keep)
        plan = plan_rotation(
            recent,
            summarized_through=old.summarized_through if old else 0,
            baseline=request.baseline,
        )
        summary = old.summary if old else ""
        if plan.needs_summary:
            older = await self.repository.messages_between(
                conn, request.user_id, plan.summarize_after, plan.summarize_through
            )
            for batch in summary_batches(older, self.prune.summary_batch):
                reply = await self.provider.summarize(
                    request_id=f"{request.request_id}:summary:{batch[-1].id}",
                    user_id=request.user_id,
                    previous_summary=summary,
                    turns=[m.turn() for m in batch],
                    model=self.summary_model,
                )
                summary = reply.summary
                await self.repository.save_summary(
                    conn,
                    user_id=request.user_id,
                    request_id=request.request_id,
                    conversation_pk=old.id if old else None,
                    summary=summary,
                    summarized_through=batch[-1].id,
                    charge=Charge(reply.model or self.summary_model, reply.usage, "summary"),
                )
        provider_id = await self.provider.create_conversation(
            request_id=f"{request.request_id}:conversation:{old.generation + 1 if old else 1}",
            user_id=request.user_id,
            api=self.api,
            summary=summary,
            seed_turns=[m.turn() for m in plan.seed],
        )
        try:
            new = await self.repository.replace_conversation(
                conn,
                old=old,
                user_id=request.user_id,
                provider_conversation_id=provider_id,
                api=self.api,
                summary=summary,
                summarized_through=plan.summarize_through,
                seen_through=plan.seed[-1].id if plan.seed else 0,
                seed_turns=len(plan.seed),
            )
        except ConversationConflict:
            log.warning("provider conversation orphaned: the mapping changed meanwhile",
                        extra={"user_id": request.user_id, "conversation_id": provider_id})
            current = await self.repository.active_conversation(conn, request.user_id)
            if current is None:
                raise
            return current
        except BaseException:
            log.warning("provider conversation orphaned: the mapping was not saved",
                        extra={"user_id": request.user_id, "conversation_id": provider_id})
            raise
        log.info(
            "conversation rotated",
            extra={
                "user_id": request.user_id,
                "reason": reason,
                "conversation_id": provider_id,
                "previous_conversation_id": old.provider_conversation_id if old else "",
                "seed_turns": len(plan.seed),
                "summarized_through": plan.summarize_through,
                "generation": new.generation,
            },
        )
        return new
