"""One stateful turn for a user: serialized, continuity back-filled, pruned, stored.

Per user, turns never overlap: an in-process asyncio lock (same-replica turns
queue there and never poll), then a lease row in ``threads.turn_leases`` so
several replicas serialize too. The lease is taken in one short statement and
released in ``finally``; no database connection is held across an upstream
call, so concurrent users are limited by the upstream, not by a pool. The
lease expires by itself (the turn's time budget plus a margin), so a crashed
holder never blocks a user for long. Fencing: the transactions that store the
turn's results (the exchange, a conversation rotation) check in the same
transaction that the lease is still ours, and otherwise store nothing
(UNAVAILABLE, TURN_LEASE_LOST): two replicas never both write a turn.
Inside the lease the request id is checked again: a retry gets the stored
exchange back and the upstream is not called twice.

A turn is not cancelled with its caller. Once started it runs to its own end
(bounded by its time budget) and stores what the upstream answered, so a router
that went away (its deadline, its own caller, a restart) does not leave an
answer that was paid for, and sits in the provider conversation, out of the
history. The retry with the same request id gets the stored exchange. When the
router has meanwhile stored its fallback under that request id, the turn's
charge is owed (below), never dropped.

If an llm call fails, its error goes back to the caller as is and no exchange
is stored; the router answers with a fallback and records that instead. Upkeep
already paid for (a summary) is left as a pending charge, taken by the next
exchange stored for the user (the fallback for this very request); so is the
answer of a turn that lost its lease after the upstream answered (purpose
``unstored_turn``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from services.common.errors import Unavailable
from services.common.exchange import Exchange
from services.common.unattended import Unattended
from services.common.usage import Charge
from services.common.vocabulary import MessageType, Route
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
    Conversation,
    GoalSaved,
    HistoryMessage,
    StoredExchange,
    ToolCall,
)
from services.threads.repository import (
    ConversationConflict,
    ThreadsRepository,
    TurnLease,
    request_id_reused,
)
from services.threads.retirer import map_or_orphan
from services.threads.user_locks import UserLocks

log = logging.getLogger(__name__)

# The baseline policy never prunes and never summarizes: it back-fills every
# unseen message (in calls of at most APPEND_BATCH) and seeds a first
# conversation with the last BASELINE_SEED_LIMIT messages (one call's worth).
BASELINE_BACKFILL_LIMIT = 2000
BASELINE_SEED_LIMIT = MAX_TURNS_PER_CALL
APPEND_BATCH = MAX_TURNS_PER_CALL

SAVE_GOAL_TOOL = "save_goal"
# The purpose of the charge of a turn answered upstream but not stored (lease lost).
UNSTORED_TURN_PURPOSE = "unstored_turn"

# A lease outlives the turn's time budget by this much (then a dead holder's expires).
LEASE_MARGIN_S = 5.0
# Waiting for another replica's lease: backoff from 10 ms doubling to 200 ms, with jitter.
LEASE_POLL_FIRST_S = 0.01
LEASE_POLL_MAX_S = 0.2
# Give up waiting this long before the caller's deadline, so the caller gets our reason.
LEASE_WAIT_SLACK_S = 0.1


@dataclass(frozen=True)
class StatefulTurnRequest:
    request_id: str
    user_id: str
    message: str
    message_type: MessageType
    settings: TurnSettings
    baseline: bool
    # Seconds until the caller's deadline; None: no deadline (the default budget applies).
    time_remaining_s: float | None = None
    # Who asks (a router instance); echoed to WatchUserChanges watchers.
    origin: str = ""


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
        turn_budget_s: float = 120.0,
        on_rotated: Callable[[], None] | None = None,
        on_window_full: Callable[[str], None] | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.repository = repository
        self.history = history
        self.provider = provider
        self.api = api
        self.prune = prune
        self.summary_model = summary_model
        self.turn_budget_s = turn_budget_s
        # Called once a rotation archived a conversation (the retirer deletes it upstream).
        self.on_rotated = on_rotated
        # Called with the user id after a stored turn whose conversation holds messages older
        # than the window (the background fold folds them into the summary: folding.py).
        self.on_window_full = on_window_full
        self.now = now or (lambda: datetime.now(UTC))
        self.locks = UserLocks()
        # Releases that failed (database restarting), retried in the background.
        self._late_releases: set[asyncio.Task[None]] = set()
        # Turns running, some of them without a caller any more.
        self._turns = Unattended("turn")

    async def run(self, request: StatefulTurnRequest) -> StoredExchange:
        """The turn, stored. A caller going away does not cancel it (see the module doc)."""
        return await self._turns.run(self._run(request), user_id=request.user_id,
                                     request_id=request.request_id)

    async def finish(self, timeout_s: float) -> None:
        """Waits (at most ``timeout_s``) for the turns still running: at shutdown."""
        await self._turns.finish(timeout_s)

    async def _run(self, request: StatefulTurnRequest) -> StoredExchange:
        started = time.monotonic()
        # Whether the request is already answered is read once, under the user's lease: a
        # read before it as well would cost every turn a round trip to spare a rare retry
        # the wait for the lease (docs/replicas.md, the open loop).
        budget = request.time_remaining_s
        if budget is None or budget > self.turn_budget_s:
            budget = self.turn_budget_s
        deadline = started + budget
        async with (
            self.locks.hold(request.user_id),
            self._lease(request.user_id, deadline) as lease,
        ):
            leased = time.monotonic()
            stored = await self._already_answered(request)
            if stored is not None:
                return stored
            conversation, carried = await self._prepare_conversation(lease, request)
            prepared = time.monotonic()
            reply = await self.provider.stateful_turn(
                request_id=request.request_id,
                user_id=request.user_id,
                conversation_id=conversation.provider_conversation_id,
                api=conversation.api,
                message=request.message,
                settings=request.settings,
                prior_turns=[m.turn() for m in carried],
            )
            if carried:
                # The conversation took them with the turn: its watermark moves past them
                # before the exchange is stored (which moves it past the exchange).
                marked = await self.repository.conversations.mark_appended(
                    conversation.id, carried[-1].id, len(carried))
                assert marked is not None and marked.status == "active"  # held under our lease
                conversation = marked
                log.info("continuity back-filled", extra={
                    "user_id": request.user_id, "appended": len(carried),
                    "conversation_id": conversation.provider_conversation_id})
            exchange = Exchange(
                request_id=request.request_id,
                user_id=request.user_id,
                user_text=request.message,
                coach_texts=reply.texts,
                route=Route.ASSISTANT,
                message_type=request.message_type,
                model=reply.model,
                charges=(Charge(reply.model, reply.usage, "answer"),),
                conversation_id=conversation.provider_conversation_id,
                latency_ms=int((time.monotonic() - started) * 1000),
            )
            answered = time.monotonic()
            new = self.history.prepare(
                exchange,
                goals=goals_from_tool_calls(reply.tool_calls),
                conversation_pk=conversation.id,
                origin=request.origin,
            )
            try:
                stored = await self.repository.exchanges.store_exchange(new, lease)
            except Unavailable as lost:
                if lost.reason == "TURN_LEASE_LOST":
                    await self._owe(request, exchange.charges[0], "turn lease lost")
                raise
            if not stored.created and stored.exchange.route is not Route.ASSISTANT:
                # The caller gave up on this turn and stored its fallback under the request id.
                await self._owe(request, exchange.charges[0], "the request holds a fallback")
        if stored.created:
            self.history.on_stored()
            if self.on_window_full is not None and not request.baseline \
                    and conversation.held_messages + 2 > self.prune.keep_messages:
                self.on_window_full(request.user_id)
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
                # Where the time went: waiting for the user's turn (lock + lease),
                # continuity/rotation, the upstream turn, storing.
                "wait_ms": int((leased - started) * 1000),
                "prepare_ms": int((prepared - leased) * 1000),
                "upstream_ms": int((answered - prepared) * 1000),
                "store_ms": int((time.monotonic() - answered) * 1000),
            },
        )
        return stored

    async def _owe(self, request: StatefulTurnRequest, answer: Charge, why: str) -> None:
        """A turn whose answer is not stored (its lease was lost, or the caller stored a
        fallback under its request id) was still paid for upstream: the charge is owed by
        the next exchange stored for the user (the router's fallback for this very
        request, when not stored yet), as upkeep is, and never dropped."""
        charge = Charge(answer.model, answer.usage, UNSTORED_TURN_PURPOSE)
        await self.repository.exchanges.add_owed_charge(request.user_id, request.request_id, charge)
        log.warning("turn answered upstream but not stored: its charge is owed by the "
                    "user's next stored exchange",
                    extra={"user_id": request.user_id, "reason": why, "model": answer.model,
                           "input_tokens": answer.usage.input_tokens,
                           "output_tokens": answer.usage.output_tokens})

    @asynccontextmanager
    async def _lease(self, user_id: str, deadline: float) -> AsyncIterator[TurnLease]:
        """The user's turn lease, waited for (short polls) until ``deadline`` (monotonic)."""
        lease = TurnLease(user_id, secrets.token_hex(16))
        delay = LEASE_POLL_FIRST_S
        waited_from = time.monotonic()
        while True:
            now = time.monotonic()
            ttl = max(deadline - now, 0.0) + LEASE_MARGIN_S
            if await self.repository.conversations.try_acquire_turn_lease(lease, ttl):
                break
            sleep = delay * random.uniform(0.5, 1.0)
            if time.monotonic() + sleep > deadline - LEASE_WAIT_SLACK_S:
                log.warning("user turn busy: lease held elsewhere until the deadline",
                            extra={"user_id": user_id,
                                   "waited_ms": int((time.monotonic() - waited_from) * 1000)})
                raise Unavailable(
                    "another turn of this user is running (on another replica); try again",
                    reason="USER_TURN_BUSY",
                )
            await asyncio.sleep(sleep)
            delay = min(delay * 2, LEASE_POLL_MAX_S)
        expires = time.monotonic() + ttl
        try:
            yield lease
        finally:
            try:
                await self.repository.conversations.release_turn_lease(lease)
            except Exception as exc:  # noqa: BLE001 - any failure: the lease must still go
                # It expires by itself, but the user's next turn would wait until then:
                # keep trying while the database comes back.
                log.warning("turn lease release failed; retrying in the background",
                            extra={"user_id": user_id, "error": repr(exc)})
                task = asyncio.create_task(self._release_later(lease, expires))
                self._late_releases.add(task)
                task.add_done_callback(self._late_releases.discard)

    async def _release_later(self, lease: TurnLease, expires: float) -> None:
        delay = 0.1
        while time.monotonic() < expires:
            await asyncio.sleep(delay)
            try:
                await self.repository.conversations.release_turn_lease(lease)
                log.info("turn lease released late", extra={"user_id": lease.user_id})
                return
            except Exception:  # noqa: BLE001 - still down: try again until the lease expires
                delay = min(delay * 2, 1.0)

    async def _already_answered(self, request: StatefulTurnRequest) -> StoredExchange | None:
        existing = await self.repository.exchanges.get_exchange(request.request_id)
        if existing is None:
            return None
        if existing.user_id != request.user_id:
            raise request_id_reused()
        return StoredExchange(existing, created=False)

    async def _prepare_conversation(
        self, lease: TurnLease, request: StatefulTurnRequest
    ) -> tuple[Conversation, list[HistoryMessage]]:
        """The active conversation, rotated when due, and the unseen messages the turn itself
        carries (the last APPEND_BATCH of them: the API adds them ahead of the message in
        the turn's own upstream call); any older unseen ones are added here first."""
        conversation = await self.repository.conversations.active_conversation(request.user_id)
        unseen: list[HistoryMessage] = []
        if conversation is not None:
            limit = BASELINE_BACKFILL_LIMIT if request.baseline else self.prune.unseen_read_limit
            unseen = await self.repository.messages.unseen_messages(conversation, limit)
        idle_s = None
        if conversation is not None and conversation.updated_at is not None:
            idle_s = (self.now() - conversation.updated_at).total_seconds()
        plan = plan_continuity(
            conversation, unseen, api=self.api, settings=self.prune, baseline=request.baseline,
            idle_s=idle_s,
        )
        if plan.rotate:
            return await self._rotate(lease, conversation, request, plan.reason), []
        assert conversation is not None
        # Whole batches are added first; the last batch (1 to APPEND_BATCH) rides with the turn.
        earlier = max(0, (len(plan.append) - 1) // APPEND_BATCH * APPEND_BATCH)
        marked: Conversation | None = None
        for start in range(0, earlier, APPEND_BATCH):
            batch = plan.append[start : start + APPEND_BATCH]
            await self.provider.append_turns(
                request_id=f"{request.request_id}:append:{batch[-1].id}",
                conversation_id=conversation.provider_conversation_id,
                api=conversation.api,
                turns=[m.turn() for m in batch],
            )
            marked = await self.repository.conversations.mark_appended(
                conversation.id, batch[-1].id, len(batch))
        if earlier:
            # The row as the last watermark move left it (held under our lease, so still
            # the active one): no second read.
            assert marked is not None and marked.status == "active"
            conversation = marked
        return conversation, list(plan.append[earlier:])

    async def _rotate(
        self,
        lease: TurnLease,
        old: Conversation | None,
        request: StatefulTurnRequest,
        reason: str,
    ) -> Conversation:
        """Folds what falls out of the window into the summary, then swaps in a new
        provider conversation seeded with summary + the last N messages.

        Crash-safe: until the final transaction the old mapping stays active, so
        a failure anywhere leaves the user exactly one active conversation and
        the next turn retries (a provider conversation created meanwhile is
        orphaned: noted for the retirer, which deletes it upstream later). The
        summary is saved as it is written, so a retry only folds in what is new.
        """
        keep = BASELINE_SEED_LIMIT if request.baseline else self.prune.keep_messages
        recent = await self.repository.messages.recent_messages(request.user_id, keep)
        if old is not None:
            summary, summarized_through = old.summary, old.summarized_through
        else:  # a first conversation: an earlier attempt may have summarized already
            summary, summarized_through = await self.repository.conversations.first_summary(request.user_id)
        plan = plan_rotation(
            recent, summarized_through=summarized_through, baseline=request.baseline
        )
        if plan.needs_summary:
            older = await self.repository.messages.messages_between(
                request.user_id, plan.summarize_after, plan.summarize_through
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
                await self.repository.conversations.save_summary(
                    lease=lease,
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
            new = await map_or_orphan(
                self.repository, lease=lease, old=old, provider_id=provider_id, api=self.api,
                summary=summary, summarized_through=plan.summarize_through,
                seen_through=plan.seed[-1].id if plan.seed else 0, seed_turns=len(plan.seed),
                lost="the mapping changed meanwhile")
        except ConversationConflict:
            current = await self.repository.conversations.active_conversation(request.user_id)
            if current is None:
                raise
            return current
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
        if old is not None and self.on_rotated is not None:
            self.on_rotated()
        return new
