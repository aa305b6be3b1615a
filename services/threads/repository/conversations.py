"""A user's provider conversations and the lease that serializes their turns: short
statements, each fenced by the lease where it writes a turn's results."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from services.common.usage import Charge
from services.threads.records import Conversation, ConversationView
from services.threads.repository.rows import (
    LEASE_HELD_SQL,
    ConversationConflict,
    TurnLease,
    add_pending_charge,
    check_lease,
    conversation_from_row,
)


class ConversationStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def conversation_view(self, user_id: str) -> ConversationView:
        rows = await self.pool.fetch(
            """SELECT * FROM threads.conversations WHERE user_id = $1
                ORDER BY (status = 'active') DESC, id DESC""",
            user_id,
        )
        active = conversation_from_row(rows[0]) if rows and rows[0]["status"] == "active" else None
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
        return conversation_from_row(row) if row else None


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
            await add_pending_charge(conn, lease.user_id, request_id, charge)
            if await conn.fetchval(LEASE_HELD_SQL, lease.user_id, lease.holder) is None:
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

    # --- background folds (services/threads/folding.py): no lease, a marker per conversation --

    async def mark_folding(self, conversation_pk: int, marker_s: float) -> tuple[str, int] | None:
        """Takes the conversation's fold marker if it is free or expired, in one statement;
        its summary and ``summarized_through`` then, or None (taken, or not active)."""
        row = await self.pool.fetchrow(
            """UPDATE threads.conversations
                  SET folding_until = now() + $2::interval
                WHERE id = $1 AND status = 'active'
                  AND (folding_until IS NULL OR folding_until < now())
            RETURNING summary, summarized_through""",
            conversation_pk, timedelta(seconds=marker_s),
        )
        return (row["summary"], row["summarized_through"]) if row else None

    async def unmark_folding(self, conversation_pk: int) -> None:
        await self.pool.execute(
            "UPDATE threads.conversations SET folding_until = NULL WHERE id = $1",
            conversation_pk,
        )

    async def save_fold(
        self,
        *,
        user_id: str,
        conversation_pk: int,
        request_id: str,
        summary: str,
        from_through: int,
        through: int,
        charge: Charge,
    ) -> bool:
        """Records a fold's charge (paid, so always: owed by the user's next stored exchange)
        and its summary, only if the conversation is still active and still summarized
        through ``from_through`` (a rotation did not fold these meanwhile). Frees the marker."""
        async with self.pool.acquire() as conn, conn.transaction():
            await add_pending_charge(conn, user_id, request_id, charge)
            status = await conn.execute(
                """UPDATE threads.conversations
                      SET summary = $2, summarized_through = $3, folding_until = NULL,
                          updated_at = now()
                    WHERE id = $1 AND status = 'active' AND summarized_through = $4""",
                conversation_pk, summary, through, from_through,
            )
        return status.endswith(" 1")

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
    ) -> Conversation | None:
        """Moves the watermark past turns added upstream; the conversation as it now is
        (None if it no longer exists)."""
        row = await self.pool.fetchrow(
            """UPDATE threads.conversations
                  SET seen_through = greatest(seen_through, $2),
                      turns_in_window = turns_in_window + $3, updated_at = now()
                WHERE id = $1
            RETURNING *""",
            conversation_pk, seen_through, appended,
        )
        return conversation_from_row(row) if row else None

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
                await check_lease(conn, lease)
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
        return conversation_from_row(row)
