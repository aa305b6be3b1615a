"""A user's history: storing exchanges answered anywhere, and reading it back."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from services.common.exchange import Exchange, UserState
from services.threads.baseline_tokens import exchange_tokens
from services.threads.paging import decode_page_token, encode_page_token, page_size
from services.threads.records import ConversationView, GoalSaved, MessagePage, StoredExchange
from services.threads.repository import BatchResult, NewExchange, ThreadsRepository

DEFAULT_RECENT_TURNS = 6
MAX_RECENT_TURNS = 100


class History:
    def __init__(
        self,
        repository: ThreadsRepository,
        *,
        prefix_tokens: Callable[[], int],
        on_stored: Callable[[], None] = lambda: None,
    ) -> None:
        self.repository = repository
        # The baseline policy's prompt prefix, as the llm service reports it (prompt_prefix).
        self.prefix_tokens = prefix_tokens
        # Wakes the ledger relay: a new outbox row is waiting.
        self.on_stored = on_stored

    async def user_state(self, user_id: str, recent_turns: int, request_id: str) -> UserState:
        turns = DEFAULT_RECENT_TURNS if recent_turns <= 0 else min(recent_turns, MAX_RECENT_TURNS)
        return await self.repository.exchanges.user_state(user_id, turns, request_id)

    def prepare(
        self,
        exchange: Exchange,
        *,
        goals: tuple[GoalSaved, ...] = (),
        conversation_pk: int | None = None,
        origin: str = "",
    ) -> NewExchange:
        message_tokens, added = exchange_tokens(exchange.user_text, exchange.coach_texts)
        return NewExchange(
            exchange=exchange,
            message_tokens=message_tokens,
            history_tokens_added=added,
            prefix_tokens=self.prefix_tokens(),
            goals=goals,
            conversation_pk=conversation_pk,
            origin=origin,
        )

    async def record_exchange(self, exchange: Exchange, origin: str = "") -> StoredExchange:
        """Stores an exchange answered outside the stateful tier; idempotent on request_id."""
        stored = await self.repository.exchanges.store_exchange(self.prepare(exchange, origin=origin))
        if stored.created:
            self.on_stored()
        return stored

    async def record_exchanges(
        self, exchanges: Sequence[Exchange], origin: str = ""
    ) -> list[BatchResult]:
        """Stores a batch in order, one commit for all; each idempotent on request_id."""
        if not exchanges:
            return []
        results = await self.repository.exchanges.store_exchanges(
            [self.prepare(e, origin=origin) for e in exchanges]
        )
        if any(r.created for r in results):
            self.on_stored()
        return results

    async def list_messages(self, user_id: str, requested_size: int, page_token: str) -> MessagePage:
        size = page_size(requested_size)
        before = decode_page_token(user_id, page_token)
        rows = await self.repository.messages.list_messages(user_id, before, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        token = encode_page_token(user_id, rows[-1].id) if more and rows else ""
        return MessagePage(tuple(rows), token)

    async def count_messages(self, user_id: str) -> int:
        return await self.repository.messages.count_messages(user_id)

    async def conversation(self, user_id: str) -> ConversationView:
        return await self.repository.conversations.conversation_view(user_id)
