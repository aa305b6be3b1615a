"""All SQL of the threads service (schema ``threads``, see migrations/), one store per
concern over one pool.

- ``exchanges``: storing exchanges (one or a batch, one transaction) and a user's state;
- ``messages``: reading the stored history;
- ``conversations``: provider conversation mappings, summaries and the turn lease;
- ``outbox``: the ledger's outbox, relayed in batches;
- ``retired``: provider conversations to delete upstream;
- ``claims``: claims on request ids, one answer per request id across router replicas.
"""

from __future__ import annotations

import asyncpg

from services.threads.repository.claims import ClaimAttempt, ClaimStore
from services.threads.repository.conversations import ConversationStore
from services.threads.repository.exchanges import (
    USER_CHANGES_CHANNEL,
    BatchResult,
    ExchangeStore,
    NewExchange,
)
from services.threads.repository.messages import MessageStore
from services.threads.repository.outbox import OutboxStore
from services.threads.repository.retired import RetiredConversation, RetiredStore
from services.threads.repository.rows import ConversationConflict, TurnLease, request_id_reused

__all__ = [
    "USER_CHANGES_CHANNEL",
    "BatchResult",
    "ClaimAttempt",
    "ClaimStore",
    "ConversationConflict",
    "ConversationStore",
    "ExchangeStore",
    "MessageStore",
    "NewExchange",
    "OutboxStore",
    "RetiredConversation",
    "RetiredStore",
    "ThreadsRepository",
    "TurnLease",
    "request_id_reused",
]


class ThreadsRepository:
    """The stores, over one pool. No connection is held across an upstream call."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.exchanges = ExchangeStore(pool)
        self.messages = MessageStore(pool)
        self.conversations = ConversationStore(pool)
        self.outbox = OutboxStore(pool)
        self.retired = RetiredStore(pool)
        self.claims = ClaimStore(pool)
