"""All SQL of the threads service (schema ``threads``, see migrations/)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import asyncpg

from services.common.errors import CoachError, FailedPrecondition, Unavailable
from services.common.exchange import AnswerRecord, Exchange, UserState
from services.common.usage import Charge
from services.common.vocabulary import COACH, USER, MessageType, Role, Route, Turn
from services.threads.records import (
    Conversation,
    ConversationView,
    GoalSaved,
    HistoryMessage,
    StoredExchange,
    StoredMessage,
)

log = logging.getLogger(__name__)

_ROLE_OF_DIRECTION: dict[str, Role] = {"in": USER, "out": COACH}

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool


class ConversationConflict(Exception):
    """The active conversation changed under us (another writer); nothing was written."""


@dataclass(frozen=True)
class TurnLease:
    """A user's turn lease (threads.turn_leases), owned while ``holder`` is ours and unexpired."""

    user_id: str
    holder: str


_LEASE_HELD_SQL = """SELECT 1 FROM threads.turn_leases
                      WHERE user_id = $1 AND holder = $2 AND expires_at > now() FOR UPDATE"""


async def _check_lease(conn: asyncpg.Connection, lease: TurnLease | None) -> None:
    """Fencing, inside the caller's transaction: the lease is still ours (and stays so
    until commit: the row is locked), else nothing is written."""
    if lease is None:
        return
    if await conn.fetchval(_LEASE_HELD_SQL, lease.user_id, lease.holder) is None:
        raise Unavailable(
            "the user's turn lease expired or was taken over; nothing was stored",
            reason="TURN_LEASE_LOST",
        )


@dataclass(frozen=True)
class NewExchange:
    """An exchange to store, with what only the threads service knows about it."""

    exchange: Exchange
    message_tokens: int
    history_tokens_added: int
    prefix_tokens: int
    goals: tuple[GoalSaved, ...] = ()
    # Set for stateful turns: the conversation row the exchange was answered in.
    conversation_pk: int | None = None
    # Who asked to store it (a router instance); echoed to WatchUserChanges watchers.
    origin: str = ""


@dataclass(frozen=True)
class BatchResult:
    """What became of one exchange of a batch: stored (created or already there) or rejected."""

    request_id: str
    created: bool
    rejected_reason: str = ""
    rejected_message: str = ""


@dataclass(frozen=True)
class RetiredConversation:
    """A provider conversation no longer used (archived by a rotation, or orphaned by one)
    and still upstream: to delete there. ``id`` is its row in the table it came from."""

    id: int
    provider_conversation_id: str
    api: str


# NOTIFY channel of stored exchanges; payload {"u": user_id, "o": origin} (see user_changes.py).
USER_CHANGES_CHANNEL = "coach_user_changes"


def request_id_reused() -> FailedPrecondition:
    """A request id already stored for another user's message: retrying cannot help."""
    return FailedPrecondition("request_id was already used for another user",
                              reason="REQUEST_ID_REUSED")


def user_change_payload(user_id: str, origin: str) -> str:
    return json.dumps({"u": user_id, "o": origin}, separators=(",", ":"))


def _exchange_from_row(row: asyncpg.Record | dict[str, Any]) -> Exchange:
    charges = row["charges"]
    if isinstance(charges, str):
        charges = json.loads(charges)
    created = row["created_at"]
    if isinstance(created, str):
        created = datetime.fromisoformat(created)
    return Exchange(
        request_id=row["request_id"],
        user_id=row["user_id"],
        user_text=row["user_text"],
        coach_texts=tuple(row["coach_texts"]),
        route=Route.from_proto_name(row["route"]),
        message_type=MessageType.from_proto_name(row["message_type"]),
        pattern=row["pattern"],
        model=row["model"],
        charges=tuple(Charge.from_json(c) for c in charges),
        conversation_id=row["conversation_id"],
        latency_ms=int(row["latency_ms"]),
        created_at=created,
    )


def _conversation_from_row(row: asyncpg.Record) -> Conversation:
    return Conversation(
        id=row["id"],
        user_id=row["user_id"],
        provider_conversation_id=row["provider_conversation_id"],
        api=row["api"],
        status=row["status"],
        summary=row["summary"],
        summarized_through=row["summarized_through"],
        seen_through=row["seen_through"],
        seed_turns=row["seed_turns"],
        turns_in_window=row["turns_in_window"],
        generation=row["generation"],
    )


def _history(rows: Sequence[asyncpg.Record]) -> list[HistoryMessage]:
    return [HistoryMessage(r["id"], _ROLE_OF_DIRECTION[r["direction"]], r["text"]) for r in rows]


_USER_STATE_SQL = """
SELECT s.message_count,
       CASE WHEN s.today = (now() AT TIME ZONE 'UTC')::date THEN s.messages_today ELSE 0 END
           AS messages_today,
       s.last_canned_reply,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(r.direction, r.text) ORDER BY r.id), '[]')
          FROM (SELECT id, direction, text FROM threads.messages
                 WHERE user_id = $1 ORDER BY id DESC LIMIT $2) r)::text AS recent,
       (SELECT to_jsonb(e) FROM threads.exchanges e
         WHERE $3 <> '' AND e.request_id = $3)::text AS existing
  FROM (SELECT 1) AS one
  LEFT JOIN threads.user_stats s ON s.user_id = $1
"""

_EXCHANGE_COLUMNS = """request_id, user_id, user_text, coach_texts, route, message_type, pattern,
    model, charges::text AS charges, conversation_id, latency_ms, created_at"""

def _coach_text(exchange: Exchange) -> str:
    return "\n\n".join(exchange.coach_texts)


# Statements of _insert_new: each takes all the batch's rows as one JSON array.
_STATS_SQL = """
INSERT INTO threads.user_stats AS s (user_id, message_count, history_tokens, today,
                                     messages_today, last_canned_reply)
SELECT r.user_id, r.n, r.tokens, (now() AT TIME ZONE 'UTC')::date, r.n, r.canned
  FROM jsonb_to_recordset($1::jsonb) AS r(user_id text, n integer, tokens bigint, canned text)
 ORDER BY r.user_id
    ON CONFLICT (user_id) DO UPDATE SET
       message_count = s.message_count + EXCLUDED.message_count,
       history_tokens = s.history_tokens + EXCLUDED.history_tokens,
       messages_today = CASE WHEN s.today = EXCLUDED.today
                             THEN s.messages_today + EXCLUDED.messages_today
                             ELSE EXCLUDED.messages_today END,
       today = EXCLUDED.today,
       -- '' when the batch has no canned reply for the user (a canned reply is never empty)
       last_canned_reply = CASE WHEN EXCLUDED.last_canned_reply <> ''
                                THEN EXCLUDED.last_canned_reply ELSE s.last_canned_reply END,
       updated_at = now()
RETURNING s.user_id, s.history_tokens
"""

_EXCHANGES_SQL = """
INSERT INTO threads.exchanges (request_id, user_id, user_text, coach_texts, route, message_type,
                               pattern, model, charges, conversation_id, latency_ms,
                               baseline_input_tokens, created_at)
SELECT r.request_id, r.user_id, r.user_text,
       ARRAY(SELECT jsonb_array_elements_text(r.coach_texts)), r.route, r.message_type,
       r.pattern, r.model, r.charges, r.conversation_id, r.latency_ms, r.baseline, $2
  FROM jsonb_to_recordset($1::jsonb) AS r(request_id text, user_id text, user_text text,
       coach_texts jsonb, route text, message_type text, pattern text, model text,
       charges jsonb, conversation_id text, latency_ms bigint, baseline bigint)
"""

_MESSAGES_SQL = """
INSERT INTO threads.messages (user_id, direction, text, route, message_type, model, request_id,
                              conversation_id, created_at)
SELECT r.user_id, r.direction, r.text, r.route, r.message_type, r.model, r.request_id,
       r.conversation_pk, $2
  FROM jsonb_to_recordset($1::jsonb) AS r(i integer, user_id text, direction text, text text,
       route text, message_type text, model text, request_id text, conversation_pk bigint)
 ORDER BY r.i
RETURNING id, request_id, direction
"""

_OUTBOX_SQL = """
INSERT INTO threads.outbox (request_id, record)
SELECT r.request_id, r.record FROM jsonb_to_recordset($1::jsonb) AS r(request_id text, record jsonb)
    ON CONFLICT (request_id) DO NOTHING
"""

_GOALS_SQL = """
INSERT INTO threads.goals (user_id, goal, deadline, arguments, request_id)
SELECT r.user_id, r.goal, r.deadline, r.arguments, r.request_id
  FROM jsonb_to_recordset($1::jsonb) AS r(user_id text, goal text, deadline text,
       arguments jsonb, request_id text)
    ON CONFLICT DO NOTHING
"""

_WATERMARK_SQL = """
UPDATE threads.conversations c
   SET turns_in_window = c.turns_in_window + $3,
       seen_through = CASE WHEN NOT EXISTS (
           SELECT 1 FROM threads.messages m
            WHERE m.user_id = c.user_id AND m.id > c.seen_through
              AND m.id < $2
              AND m.conversation_id IS DISTINCT FROM c.id)
           THEN $4 ELSE c.seen_through END,
       updated_at = now()
 WHERE c.id = $1
"""



class ThreadsRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        # Short statements only: no connection is held across an upstream call.
        self.pool = pool

    # --- the router's hot path ------------------------------------------------------------

    async def user_state(self, user_id: str, recent_turns: int, request_id: str) -> UserState:
        """One statement: stats row (primary key), last turns (index range), existing answer."""
        row = await self.pool.fetchrow(_USER_STATE_SQL, user_id, recent_turns, request_id)
        assert row is not None
        recent = [Turn(_ROLE_OF_DIRECTION[d], t) for d, t in json.loads(row["recent"])]
        existing = _exchange_from_row(json.loads(row["existing"])) if row["existing"] else None
        if existing is not None and existing.user_id != user_id:
            # Said now, while the caller waits: answered first, the clash would only
            # surface when the router's journal stores the answer.
            raise request_id_reused()
        return UserState(
            message_count=row["message_count"] or 0,
            recent_turns=tuple(recent),
            existing=existing,
            messages_today=row["messages_today"] or 0,
            last_canned_reply=row["last_canned_reply"] or "",
        )

    # --- storing exchanges ----------------------------------------------------------------

    async def get_exchange(self, request_id: str, db: Executor | None = None) -> Exchange | None:
        row = await (db or self.pool).fetchrow(
            f"SELECT {_EXCHANGE_COLUMNS} FROM threads.exchanges WHERE request_id = $1", request_id
        )
        return _exchange_from_row(row) if row else None

    async def store_exchange(
        self, new: NewExchange, lease: TurnLease | None = None
    ) -> StoredExchange:
        """Stores the exchange, its messages, stats, pending upkeep charges, outbox row and goals
        in one transaction; a request_id already stored returns the first exchange instead.

        With a ``lease`` (a stateful turn), the transaction first checks the lease is still
        ours and raises UNAVAILABLE (TURN_LEASE_LOST), storing nothing, when it is not.
        """
        async with self.pool.acquire() as conn:
            return await self._store_exchange(new, conn, lease)

    async def store_exchanges(self, batch: Sequence[NewExchange]) -> list[BatchResult]:
        """Stores a batch in order, in ONE transaction with a handful of set-based statements
        (not a handful per exchange): a router's journal sends hundreds of canned replies at
        once. Idempotent on each request_id: one already stored is reported as not created,
        one whose request_id belongs to another user as rejected; neither holds the others
        back. Should another writer store one of them meanwhile, the batch is redone."""
        async with self.pool.acquire() as conn:
            for _attempt in range(3):
                try:
                    async with conn.transaction():
                        return await self._store_batch(batch, conn)
                except asyncpg.UniqueViolationError:
                    log.info("batch raced another writer; storing it again",
                             extra={"exchanges": len(batch)})
            raise Unavailable("exchanges kept racing other writers; retry",
                              reason="STORE_CONTENDED", retry_after_s=0.5)

    async def _store_batch(
        self, batch: Sequence[NewExchange], conn: asyncpg.Connection
    ) -> list[BatchResult]:
        ids = [n.exchange.request_id for n in batch]
        owners = {r["request_id"]: r["user_id"] for r in await conn.fetch(
            "SELECT request_id, user_id FROM threads.exchanges WHERE request_id = ANY($1::text[])",
            ids)}
        results: list[BatchResult] = []
        fresh: list[NewExchange] = []
        for new in batch:
            ex = new.exchange
            owner = owners.get(ex.request_id)
            if owner is None:
                owners[ex.request_id] = ex.user_id  # a repeat later in the batch is a retry
                fresh.append(new)
                results.append(BatchResult(ex.request_id, True))
            elif owner == ex.user_id:
                results.append(BatchResult(ex.request_id, False))
            else:
                reused = request_id_reused()
                results.append(BatchResult(ex.request_id, False, reused.reason, reused.message))
        if fresh:
            await self._insert_new(fresh, conn)
        return results

    async def _store_exchange(
        self, new: NewExchange, conn: asyncpg.Connection, lease: TurnLease | None
    ) -> StoredExchange:
        ex = new.exchange
        try:
            async with conn.transaction():
                await _check_lease(conn, lease)
                if await conn.fetchval("SELECT 1 FROM threads.exchanges WHERE request_id = $1",
                                       ex.request_id) is None:
                    return (await self._insert_new([new], conn))[0]
        except asyncpg.UniqueViolationError:
            pass  # another writer stored it meanwhile; rolled back: stats and upkeep as they were
        existing = await self.get_exchange(ex.request_id, conn)
        assert existing is not None
        if existing.user_id != ex.user_id:
            raise request_id_reused()
        return StoredExchange(existing, created=False)

    async def _insert_new(
        self, news: Sequence[NewExchange], conn: asyncpg.Connection
    ) -> list[StoredExchange]:
        """Stores exchanges none of which is stored yet, in order: stats, owed upkeep, the
        exchanges, their messages, outbox rows, goals, conversation watermarks and change
        notifications, one statement each for all of them. Raises UniqueViolationError when
        another writer stored one of them first (the caller's transaction rolls back)."""
        created_at: datetime = await conn.fetchval("SELECT now()")  # every row's created_at
        users: dict[str, list[NewExchange]] = {}
        for new in news:
            users.setdefault(new.exchange.user_id, []).append(new)
        # Stats rows first, locked in user order (no deadlock between concurrent batches),
        # before any message id is drawn, so a user's message ids follow commit order.
        stats: list[dict[str, Any]] = [
            {"user_id": user, "n": len(mine), "tokens": sum(n.history_tokens_added for n in mine),
             "canned": next((_coach_text(n.exchange) for n in reversed(mine)
                             if n.exchange.route is Route.PATTERN), "")}
            for user, mine in sorted(users.items())]
        history_after = {r["user_id"]: int(r["history_tokens"])
                         for r in await conn.fetch(_STATS_SQL, json.dumps(stats))}
        upkeep: dict[str, list[Charge]] = {}
        for r in sorted(await conn.fetch(
                "DELETE FROM threads.pending_charges WHERE user_id = ANY($1::text[]) "
                "RETURNING user_id, id, charge::text", list(users)), key=lambda r: r["id"]):
            upkeep.setdefault(r["user_id"], []).append(Charge.from_json(json.loads(r["charge"])))

        history = {s["user_id"]: history_after[s["user_id"]] - s["tokens"] for s in stats}
        stored: list[StoredExchange] = []
        exchanges: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        outbox: list[dict[str, Any]] = []
        goals: list[dict[str, Any]] = []
        notes: list[str] = []
        for new in news:
            ex = new.exchange
            # The user's owed upkeep goes with their first exchange of the batch.
            charges = tuple(ex.charges) + tuple(upkeep.pop(ex.user_id, ()))
            baseline = new.prefix_tokens + history[ex.user_id] + new.message_tokens
            history[ex.user_id] += new.history_tokens_added
            coach_text = _coach_text(ex)
            route, message_type = ex.route.proto_name, ex.message_type.proto_name
            exchanges.append({
                "request_id": ex.request_id, "user_id": ex.user_id, "user_text": ex.user_text,
                "coach_texts": list(ex.coach_texts), "route": route,
                "message_type": message_type, "pattern": ex.pattern, "model": ex.model,
                "charges": [c.to_json() for c in charges], "conversation_id": ex.conversation_id,
                "latency_ms": ex.latency_ms, "baseline": baseline})
            common = {"user_id": ex.user_id, "route": route, "message_type": message_type,
                      "model": ex.model, "request_id": ex.request_id,
                      "conversation_pk": new.conversation_pk}
            messages.append({**common, "i": len(messages), "direction": "in", "text": ex.user_text})
            if coach_text.strip():
                messages.append({**common, "i": len(messages), "direction": "out",
                                 "text": coach_text})
            record = AnswerRecord(
                request_id=ex.request_id, user_id=ex.user_id, route=ex.route,
                message_type=ex.message_type, model=ex.model, charges=charges,
                latency_ms=ex.latency_ms, answer_time=created_at, baseline_input_tokens=baseline,
            )
            outbox.append({"request_id": ex.request_id, "record": record.to_json()})
            goals += [{"user_id": ex.user_id, "goal": g.goal, "deadline": g.deadline,
                       "arguments": g.arguments, "request_id": ex.request_id} for g in new.goals]
            notes.append(user_change_payload(ex.user_id, new.origin))
            stored.append(StoredExchange(replace(ex, charges=charges, created_at=created_at),
                                         created=True))

        await conn.execute(_EXCHANGES_SQL, json.dumps(exchanges), created_at)
        message_ids: dict[tuple[str, str], int] = {
            (r["request_id"], r["direction"]): r["id"]
            for r in await conn.fetch(_MESSAGES_SQL, json.dumps(messages), created_at)}
        await conn.execute(_OUTBOX_SQL, json.dumps(outbox))
        if goals:
            await conn.execute(_GOALS_SQL, json.dumps(goals))
        for new in news:
            if new.conversation_pk is not None:
                # The conversation saw this exchange. Its watermark moves past it only
                # when nothing answered elsewhere is still unseen before it.
                rid = new.exchange.request_id
                first = message_ids[(rid, "in")]
                answered = (rid, "out") in message_ids
                await conn.execute(_WATERMARK_SQL, new.conversation_pk, first, 2 if answered else 1,
                                   message_ids[(rid, "out")] if answered else first)
        await conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                           USER_CHANGES_CHANNEL, list(dict.fromkeys(notes)))
        return stored

    # --- reading history -------------------------------------------------------------------

    async def list_messages(
        self, user_id: str, before_id: int | None, limit: int
    ) -> list[StoredMessage]:
        rows = await self.pool.fetch(
            """SELECT id, request_id, direction, text, route, message_type, model, created_at
                 FROM threads.messages
                WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2)
                ORDER BY id DESC LIMIT $3""",
            user_id, before_id, limit,
        )
        return [
            StoredMessage(
                id=r["id"], request_id=r["request_id"], role=_ROLE_OF_DIRECTION[r["direction"]],
                text=r["text"], route=Route.from_proto_name(r["route"]),
                message_type=MessageType.from_proto_name(r["message_type"]), model=r["model"],
                created_at=r["created_at"],
            )
            for r in rows
        ]

    async def count_messages(self, user_id: str) -> int:
        count = await self.pool.fetchval(
            "SELECT message_count FROM threads.user_stats WHERE user_id = $1", user_id
        )
        return int(count or 0)

    async def conversation_view(self, user_id: str) -> ConversationView:
        rows = await self.pool.fetch(
            """SELECT * FROM threads.conversations WHERE user_id = $1
                ORDER BY (status = 'active') DESC, id DESC""",
            user_id,
        )
        active = _conversation_from_row(rows[0]) if rows and rows[0]["status"] == "active" else None
        return ConversationView(active, generation=len(rows))

    # --- a stateful turn: short statements under the user's turn lease -------------------

    async def try_acquire_turn_lease(self, lease: TurnLease, ttl_s: float) -> bool:
        """One statement: takes the user's lease if it is free or expired (a dead holder's)."""
        row = await self.pool.fetchrow(
            """INSERT INTO threads.turn_leases AS l (user_id, holder, expires_at)
               VALUES ($1, $2, now() + $3::interval)
               ON CONFLICT (user_id) DO UPDATE
                   SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                 WHERE l.expires_at < now()
               RETURNING holder""",
            lease.user_id, lease.holder, timedelta(seconds=ttl_s),
        )
        return row is not None

    async def release_turn_lease(self, lease: TurnLease) -> None:
        await self.pool.execute(
            "DELETE FROM threads.turn_leases WHERE user_id = $1 AND holder = $2",
            lease.user_id, lease.holder,
        )

    async def active_conversation(self, user_id: str) -> Conversation | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM threads.conversations WHERE user_id = $1 AND status = 'active'", user_id
        )
        return _conversation_from_row(row) if row else None

    async def unseen_messages(
        self, conversation: Conversation, limit: int
    ) -> list[HistoryMessage]:
        """The newest ``limit`` messages the conversation has not seen, oldest first."""
        rows = await self.pool.fetch(
            """SELECT id, direction, text FROM threads.messages
                WHERE user_id = $1 AND id > $2 AND conversation_id IS DISTINCT FROM $3
                ORDER BY id DESC LIMIT $4""",
            conversation.user_id, conversation.seen_through, conversation.id, limit,
        )
        return list(reversed(_history(rows)))

    async def recent_messages(
        self, user_id: str, limit: int
    ) -> list[HistoryMessage]:
        rows = await self.pool.fetch(
            """SELECT id, direction, text FROM threads.messages
                WHERE user_id = $1 ORDER BY id DESC LIMIT $2""",
            user_id, limit,
        )
        return list(reversed(_history(rows)))

    async def messages_between(
        self, user_id: str, after_id: int, through_id: int
    ) -> list[HistoryMessage]:
        rows = await self.pool.fetch(
            """SELECT id, direction, text FROM threads.messages
                WHERE user_id = $1 AND id > $2 AND id <= $3 ORDER BY id""",
            user_id, after_id, through_id,
        )
        return _history(rows)

    async def add_pending_charge(
        self, conn: asyncpg.Connection, user_id: str, request_id: str, charge: Charge
    ) -> None:
        await conn.execute(
            """INSERT INTO threads.pending_charges (user_id, request_id, charge)
               VALUES ($1, $2, $3::jsonb)""",
            user_id, request_id, json.dumps(charge.to_json()),
        )

    async def add_owed_charge(self, user_id: str, request_id: str, charge: Charge) -> None:
        """A charge paid upstream for nothing stored: taken by the user's next exchange."""
        async with self.pool.acquire() as conn:
            await self.add_pending_charge(conn, user_id, request_id, charge)

    async def save_summary(
        self,
        *,
        lease: TurnLease,
        request_id: str,
        conversation_pk: int | None,
        summary: str,
        summarized_through: int,
        charge: Charge,
    ) -> None:
        """Records a summary step: its charge (owed by the next stored answer) and the
        running summary (on the active conversation, or in ``first_summaries`` while the
        user has none yet), so that a rotation interrupted later never summarizes the
        same messages twice.

        The charge is recorded whatever happens (it was paid); the running summary only
        while ``lease`` is still ours, so a turn that lost its lease changes nothing else.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await self.add_pending_charge(conn, lease.user_id, request_id, charge)
            if await conn.fetchval(_LEASE_HELD_SQL, lease.user_id, lease.holder) is None:
                return  # the lease is gone: the charge stays, nothing else changes
            if conversation_pk is not None:
                await conn.execute(
                    """UPDATE threads.conversations
                          SET summary = $2, summarized_through = $3, updated_at = now()
                        WHERE id = $1 AND status = 'active'""",
                    conversation_pk, summary, summarized_through,
                )
            else:
                await conn.execute(
                    """INSERT INTO threads.first_summaries (user_id, summary, summarized_through)
                       VALUES ($1, $2, $3)
                       ON CONFLICT (user_id) DO UPDATE
                          SET summary = excluded.summary,
                              summarized_through = excluded.summarized_through,
                              updated_at = now()""",
                    lease.user_id, summary, summarized_through,
                )

    async def first_summary(self, user_id: str) -> tuple[str, int]:
        """The running summary of a user with no conversation yet ('', 0 when none)."""
        row = await self.pool.fetchrow(
            """SELECT summary, summarized_through FROM threads.first_summaries
                WHERE user_id = $1""",
            user_id,
        )
        return (row["summary"], row["summarized_through"]) if row else ("", 0)

    async def mark_appended(
        self, conversation_pk: int, seen_through: int, appended: int
    ) -> None:
        await self.pool.execute(
            """UPDATE threads.conversations
                  SET seen_through = greatest(seen_through, $2),
                      turns_in_window = turns_in_window + $3, updated_at = now()
                WHERE id = $1""",
            conversation_pk, seen_through, appended,
        )

    async def replace_conversation(
        self,
        *,
        lease: TurnLease,
        old: Conversation | None,
        provider_conversation_id: str,
        api: str,
        summary: str,
        summarized_through: int,
        seen_through: int,
        seed_turns: int,
    ) -> Conversation:
        """In one transaction: archive ``old`` (if any) and insert the new active mapping.

        Raises ConversationConflict (and writes nothing) when ``old`` is no longer
        the user's active conversation; raises UNAVAILABLE (TURN_LEASE_LOST), writing
        nothing, when ``lease`` is no longer ours.
        """
        user_id = lease.user_id
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await _check_lease(conn, lease)
                if old is not None:
                    status = await conn.execute(
                        """UPDATE threads.conversations
                              SET status = 'archived', archived_at = now(), updated_at = now()
                            WHERE id = $1 AND status = 'active'""",
                        old.id,
                    )
                    if status != "UPDATE 1":
                        raise ConversationConflict(f"conversation {old.id} is no longer active")
                else:  # the first conversation carries the summary from now on
                    await conn.execute(
                        "DELETE FROM threads.first_summaries WHERE user_id = $1", user_id)
                row = await conn.fetchrow(
                    """INSERT INTO threads.conversations (user_id, provider_conversation_id, api,
                           summary, summarized_through, seen_through, seed_turns, generation)
                       VALUES ($1, $2, $3, $4, $5, $6, $7,
                               1 + (SELECT count(*) FROM threads.conversations WHERE user_id = $1))
                       RETURNING *""",
                    user_id, provider_conversation_id, api, summary, summarized_through,
                    seen_through, seed_turns,
                )
        except asyncpg.UniqueViolationError as exc:
            raise ConversationConflict("another active conversation exists") from exc
        assert row is not None
        return _conversation_from_row(row)

    # --- the ledger outbox -----------------------------------------------------------------

    async def relay_outbox_batch(
        self, limit: int, send: Callable[[list[AnswerRecord]], Awaitable[None]]
    ) -> int:
        """Sends up to ``limit`` pending records and deletes them once ``send`` returns.

        The rows stay locked (FOR UPDATE SKIP LOCKED) in a transaction held across
        the call, so no other relay sends them meanwhile; should ``send`` fail,
        the transaction rolls back and the rows stay for the next attempt.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, record::text FROM threads.outbox ORDER BY id
                    LIMIT $1 FOR UPDATE SKIP LOCKED""",
                limit,
            )
            if not rows:
                return 0
            records = [AnswerRecord.from_json(json.loads(r["record"])) for r in rows]
            try:
                await send(records)
            except CoachError as exc:
                if exc.code != "INVALID_ARGUMENT":
                    raise
                # One record the ledger refuses must not block the others: send them one
                # by one (the ledger is idempotent) and set the refused ones aside.
                for row, record in zip(rows, records, strict=True):
                    try:
                        await send([record])
                    except CoachError as one:
                        if one.code != "INVALID_ARGUMENT":
                            raise
                        log.error("ledger refused an answer record; set aside",
                                  extra={"record_request_id": record.request_id,
                                         "error": one.message})
                        await conn.execute(
                            """INSERT INTO threads.outbox_rejected
                                   (id, request_id, record, error, created_at)
                               SELECT id, request_id, record, $2, created_at
                                 FROM threads.outbox WHERE id = $1
                               ON CONFLICT (id) DO NOTHING""",
                            row["id"], one.message,
                        )
            await conn.execute(
                "DELETE FROM threads.outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
            return len(rows)

    async def conversations_to_retire(self, limit: int) -> list[RetiredConversation]:
        """Archived conversations still upstream, oldest archived first."""
        rows = await self.pool.fetch(
            """SELECT id, provider_conversation_id, api FROM threads.conversations
                WHERE status = 'archived' AND upstream_deleted_at IS NULL
                  AND upstream_delete_error IS NULL
                ORDER BY archived_at, id LIMIT $1""",
            limit,
        )
        return [RetiredConversation(r["id"], r["provider_conversation_id"], r["api"])
                for r in rows]

    async def mark_deleted_upstream(self, conversation_pk: int) -> None:
        await self.pool.execute(
            """UPDATE threads.conversations SET upstream_deleted_at = now()
                WHERE id = $1 AND upstream_deleted_at IS NULL""",
            conversation_pk,
        )

    async def mark_delete_refused(self, conversation_pk: int, error: str) -> None:
        """The upstream refused to delete it for good: not tried again."""
        await self.pool.execute(
            "UPDATE threads.conversations SET upstream_delete_error = $2 WHERE id = $1",
            conversation_pk, error[:500],
        )

    # --- provider conversations a rotation created and could not map ------------------------

    async def record_orphan(self, user_id: str, provider_conversation_id: str, api: str) -> None:
        """Remembers a provider conversation nothing maps, for the retirer to delete."""
        await self.pool.execute(
            """INSERT INTO threads.orphaned_conversations (user_id, provider_conversation_id, api)
               VALUES ($1, $2, $3) ON CONFLICT (provider_conversation_id) DO NOTHING""",
            user_id, provider_conversation_id, api,
        )

    async def orphans_to_delete(self, older_than_s: float, limit: int) -> list[RetiredConversation]:
        """Orphans older than ``older_than_s`` that no mapping names, oldest first. Those a
        mapping does name (its transaction committed after all) are forgotten here."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                """DELETE FROM threads.orphaned_conversations o
                    WHERE EXISTS (SELECT 1 FROM threads.conversations c
                                   WHERE c.provider_conversation_id = o.provider_conversation_id)""")
            rows = await conn.fetch(
                """SELECT id, provider_conversation_id, api FROM threads.orphaned_conversations
                    WHERE upstream_delete_error IS NULL AND created_at < now() - $1::interval
                    ORDER BY created_at, id LIMIT $2""",
                timedelta(seconds=older_than_s), limit,
            )
        return [RetiredConversation(r["id"], r["provider_conversation_id"], r["api"])
                for r in rows]

    async def orphan_deleted(self, orphan_pk: int) -> None:
        await self.pool.execute("DELETE FROM threads.orphaned_conversations WHERE id = $1",
                                orphan_pk)

    async def orphan_delete_refused(self, orphan_pk: int, error: str) -> None:
        await self.pool.execute(
            "UPDATE threads.orphaned_conversations SET upstream_delete_error = $2 WHERE id = $1",
            orphan_pk, error[:500],
        )

    async def outbox_size(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM threads.outbox") or 0)
