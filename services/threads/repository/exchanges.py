"""Storing exchanges and reading a user's state: the router's hot path.

An exchange is stored with everything that goes with it in one transaction: the user's
stats, the upkeep charges it owes, its messages, the ledger's outbox row, any saved goal,
the conversation's watermark and a change notification for the routers' caches. A
router's journal sends batches of them, stored with one statement per table for the
whole batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from services.common.errors import Unavailable
from services.common.exchange import AnswerRecord, Exchange, UserState
from services.common.usage import Charge
from services.common.vocabulary import Route, Turn
from services.threads.baseline_tokens import baseline_input_tokens
from services.threads.records import GoalSaved, StoredExchange
from services.threads.repository.claims import CLAIMS_ANSWERED_SQL
from services.threads.repository.rows import (
    ROLE_OF_DIRECTION,
    Executor,
    TurnLease,
    add_pending_charge,
    exchange_from_row,
    lease_lost,
    request_id_reused,
)

log = logging.getLogger(__name__)

# The purpose of the charge of a second answer to a request id already answered (a claim
# taken over from a router that was not dead after all): paid upstream, so owed.
DUPLICATE_ANSWER_PURPOSE = "duplicate_answer"


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


# NOTIFY channel of stored exchanges; payload {"u": user_id, "o": origin} (see user_changes.py).
USER_CHANGES_CHANNEL = "coach_user_changes"


def user_change_payload(user_id: str, origin: str) -> str:
    return json.dumps({"u": user_id, "o": origin}, separators=(",", ":"))


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
# Before storing one exchange: its lease still held (locked until commit; true without
# one), whether the request id is stored already, and the transaction's now().
_BEFORE_STORE_SQL = """
SELECT now() AS now,
       EXISTS (SELECT 1 FROM threads.exchanges WHERE request_id = $1) AS stored,
       ($2::text IS NULL OR EXISTS (
           SELECT 1 FROM threads.turn_leases
            WHERE user_id = $2 AND holder = $3 AND expires_at > now() FOR UPDATE)) AS lease_held
"""

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


class ExchangeStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        # Short statements only: no connection is held across an upstream call.
        self.pool = pool

    async def user_state(self, user_id: str, recent_turns: int, request_id: str) -> UserState:
        """One statement: stats row (primary key), last turns (index range), existing answer."""
        row = await self.pool.fetchrow(_USER_STATE_SQL, user_id, recent_turns, request_id)
        assert row is not None
        recent = [Turn(ROLE_OF_DIRECTION[d], t) for d, t in json.loads(row["recent"])]
        existing = exchange_from_row(json.loads(row["existing"])) if row["existing"] else None
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
        return exchange_from_row(row) if row else None

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
        stored = {r["request_id"]: (r["user_id"], tuple(r["coach_texts"])) for r in await conn.fetch(
            """SELECT request_id, user_id, coach_texts FROM threads.exchanges
                WHERE request_id = ANY($1::text[])""", ids)}
        results: list[BatchResult] = []
        fresh: list[NewExchange] = []
        for new in batch:
            ex = new.exchange
            owner, texts = stored.get(ex.request_id, (None, ()))
            if owner is None:
                # a repeat later in the batch is a retry
                stored[ex.request_id] = (ex.user_id, tuple(ex.coach_texts))
                fresh.append(new)
                results.append(BatchResult(ex.request_id, True))
            elif owner == ex.user_id:
                if texts != tuple(ex.coach_texts) and ex.charges:
                    # A second answer (its claim was taken over): the first one stands, but
                    # this one was paid for upstream too, so the user's next exchange owes it.
                    for charge in ex.charges:
                        await add_pending_charge(conn, ex.user_id, ex.request_id,
                                                 replace(charge, purpose=DUPLICATE_ANSWER_PURPOSE))
                    log.warning("a request id was answered twice: the first answer stands, "
                                "the second one's charge is owed",
                                extra={"user_id": ex.user_id, "request_id": ex.request_id})
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
                # One round trip for the fencing (the lease row locked until commit), the
                # "stored already?" check and the rows' created_at: a stateful turn stores
                # one exchange, so each statement here is a round trip of its own.
                # The check reads the statement's snapshot, which may predate a writer that
                # was waiting on the lease row: the unique request id catches that one
                # (UniqueViolationError below).
                row = await conn.fetchrow(_BEFORE_STORE_SQL, ex.request_id,
                                          lease.user_id if lease else None,
                                          lease.holder if lease else None)
                if not row["lease_held"]:
                    raise lease_lost()
                if not row["stored"]:
                    return (await self._insert_new([new], conn, row["now"]))[0]
        except asyncpg.UniqueViolationError:
            pass  # another writer stored it meanwhile; rolled back: stats and upkeep as they were
        existing = await self.get_exchange(ex.request_id, conn)
        assert existing is not None
        if existing.user_id != ex.user_id:
            raise request_id_reused()
        return StoredExchange(existing, created=False)

    async def _insert_new(
        self, news: Sequence[NewExchange], conn: asyncpg.Connection,
        created_at: datetime | None = None,
    ) -> list[StoredExchange]:
        """Stores exchanges none of which is stored yet, in order: stats, owed upkeep, the
        exchanges, their messages, outbox rows, goals, conversation watermarks and change
        notifications, one statement each for all of them. Raises UniqueViolationError when
        another writer stored one of them first (the caller's transaction rolls back)."""
        if created_at is None:  # every row's created_at: the transaction's now()
            created_at = await conn.fetchval("SELECT now()")
        assert created_at is not None
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
        upkeep, reserved = await self._take_owed(news, users, conn)

        history = {s["user_id"]: history_after[s["user_id"]] - s["tokens"] for s in stats}
        stored: list[StoredExchange] = []
        exchanges: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        outbox: list[dict[str, Any]] = []
        goals: list[dict[str, Any]] = []
        notes: list[str] = []
        for new in news:
            ex = new.exchange
            # Owed upkeep reserved by this request id's claim (its router reported it in the
            # reply), then what else the exchange may take (_take_owed).
            own = reserved.pop(ex.request_id, ())
            charges = tuple(ex.charges) + tuple(own) + tuple(upkeep.pop(ex.request_id, ()))
            baseline = baseline_input_tokens(new.prefix_tokens, history[ex.user_id],
                                             new.message_tokens)
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
        await conn.execute(CLAIMS_ANSWERED_SQL, [n.exchange.request_id for n in news])
        await conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                           USER_CHANGES_CHANNEL, list(dict.fromkeys(notes)))
        return stored

    @staticmethod
    async def _take_owed(
        news: Sequence[NewExchange], users: Mapping[str, list[NewExchange]],
        conn: asyncpg.Connection,
    ) -> tuple[dict[str, list[Charge]], dict[str, list[Charge]]]:
        """Deletes the owed charges these exchanges settle: those reserved for their request
        ids, and the users' free ones (not reserved by a live claim) when an exchange of the
        user may take them: a stateful turn (its router reports what threads stored) or an
        answer whose request id was never claimed (a router without claims). A journaled
        answer under a claim takes only what its claim reserved, which its reply reported;
        what was owed after the claim waits for the user's next claim.
        Returns (free charges by the request id taking them, reserved charges by request id)."""
        rids = [n.exchange.request_id for n in news]
        claimed = {r["request_id"] for r in await conn.fetch(
            "SELECT request_id FROM threads.answer_claims WHERE request_id = ANY($1::text[])",
            rids)}
        takers: dict[str, str] = {}
        for user, mine in users.items():
            taker = next((n.exchange.request_id for n in mine if n.conversation_pk is not None
                          or n.exchange.request_id not in claimed), None)
            if taker is not None:
                takers[user] = taker
        free: dict[str, list[Charge]] = {}
        reserved: dict[str, list[Charge]] = {}
        rows = await conn.fetch(
            """DELETE FROM threads.pending_charges p
                WHERE p.user_id = ANY($1::text[])
                  AND (p.reserved_for = ANY($2::text[])
                       OR (p.user_id = ANY($3::text[])
                           AND (p.reserved_for IS NULL OR NOT EXISTS (
                                SELECT 1 FROM threads.answer_claims r
                                 WHERE r.request_id = p.reserved_for
                                   AND r.expires_at > now()))))
            RETURNING p.user_id, p.id, p.reserved_for, p.charge::text""",
            list(users), rids, list(takers))
        mine_ids = set(rids)
        for r in sorted(rows, key=lambda r: r["id"]):
            charge = Charge.from_json(json.loads(r["charge"]))
            if r["reserved_for"] in mine_ids:
                reserved.setdefault(r["reserved_for"], []).append(charge)
            else:
                free.setdefault(takers[r["user_id"]], []).append(charge)
        return free, reserved

    async def add_owed_charge(self, user_id: str, request_id: str, charge: Charge) -> None:
        """A charge paid upstream for nothing stored: taken by the user's next exchange."""
        async with self.pool.acquire() as conn:
            await add_pending_charge(conn, user_id, request_id, charge)
