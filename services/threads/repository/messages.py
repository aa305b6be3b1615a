"""Reading a user's stored messages: pages of the history, and the windows a stateful
turn needs (unseen by the conversation, the most recent, a range to summarize)."""

from __future__ import annotations

import asyncpg

from services.common.vocabulary import MessageType, Route
from services.threads.records import Conversation, HistoryMessage, StoredMessage
from services.threads.repository.rows import ROLE_OF_DIRECTION, history_rows


class MessageStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

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
                id=r["id"], request_id=r["request_id"], role=ROLE_OF_DIRECTION[r["direction"]],
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
        return list(reversed(history_rows(rows)))

    async def recent_messages(
        self, user_id: str, limit: int
    ) -> list[HistoryMessage]:
        rows = await self.pool.fetch(
            """SELECT id, direction, text FROM threads.messages
                WHERE user_id = $1 ORDER BY id DESC LIMIT $2""",
            user_id, limit,
        )
        return list(reversed(history_rows(rows)))

    async def messages_between(
        self, user_id: str, after_id: int, through_id: int
    ) -> list[HistoryMessage]:
        rows = await self.pool.fetch(
            """SELECT id, direction, text FROM threads.messages
                WHERE user_id = $1 AND id > $2 AND id <= $3 ORDER BY id""",
            user_id, after_id, through_id,
        )
        return history_rows(rows)
