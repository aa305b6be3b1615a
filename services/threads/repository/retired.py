"""Provider conversations to delete upstream: those a rotation archived, and those a
rotation created but could not map (orphans, deleted after a grace period)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg


@dataclass(frozen=True)
class RetiredConversation:
    """A provider conversation no longer used (archived by a rotation, or orphaned by one)
    and still upstream: to delete there. ``id`` is its row in the table it came from."""

    id: int
    provider_conversation_id: str
    api: str



class RetiredStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

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
